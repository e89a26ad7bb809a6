"""Server reflection lists every service and RPC of the contract, and can be turned off.

The reflection client (``ProtoReflectionDescriptorDatabase``) is what grpcurl and Postman
do: list services, then fetch their file descriptors. It is blocking, so it runs in a
thread beside the in-process server's event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from sessiond.v1 import message_service_pb2, session_service_pb2, stats_service_pb2

CONTRACT = {
    service.full_name: sorted(method.name for method in service.methods)
    for module in (session_service_pb2, message_service_pb2, stats_service_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
}


def reflect(address: str) -> tuple[list[str], dict[str, list[str]]]:
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        methods = {
            name: sorted(m.name for m in pool.FindServiceByName(name).methods)
            for name in services
            if name.startswith("sessiond.")
        }
    return services, methods


async def test_reflection_lists_every_service_and_rpc(server: Any) -> None:
    services, methods = await asyncio.to_thread(reflect, server.address)
    assert set(CONTRACT) <= set(services)
    assert "grpc.health.v1.Health" in services
    assert "grpc.reflection.v1alpha.ServerReflection" in services
    assert methods == CONTRACT
    assert len(CONTRACT) == 3 and sum(map(len, CONTRACT.values())) >= 21


async def test_reflection_can_be_turned_off(make_server: Any) -> None:
    server = await make_server(reflection=False)
    with pytest.raises(grpc.RpcError) as caught:
        await asyncio.to_thread(reflect, server.address)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
