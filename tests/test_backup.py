"""Backup of a live SQLite database under write load, and restore that refuses a live database.

The guarantee tested: a backup taken while writers keep committing opens, passes
``PRAGMA integrity_check`` and the counter recounts, and holds every write acknowledged
before the backup began.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sessiond.v1 import message_pb2, message_service_pb2, session_pb2, session_service_pb2
from sessiond_server.maintenance import (
    DatabaseInUse,
    MaintenanceError,
    Progress,
    backup_database,
    restore_database,
)
from sessiond_server.store import SQLiteStore

SQLITE = pytest.mark.parametrize("make_server", ["sqlite"], indirect=True)
WRITERS = 4
TIMEOUT = 60.0


async def create(server: Any, session_id: str) -> None:
    await server.sessions.CreateSession(session_service_pb2.CreateSessionRequest(
        session=session_pb2.Session(id=session_id)))


async def append(server: Any, session_id: str, message_id: str, content: str = "") -> None:
    await server.messages.AppendMessages(message_service_pb2.AppendMessagesRequest(
        session_id=session_id, messages=[message_pb2.Message(
            id=message_id, role=message_pb2.ROLE_USER, content=content or message_id * 20)]))


async def consistency_of(database: Path) -> list[str]:
    store = SQLiteStore(database, clock=lambda: 0)
    await store.open()
    try:
        return await store.check_consistency()
    finally:
        await store.close()


@SQLITE
async def test_a_backup_under_write_load_has_every_write_acknowledged_before_it(
    make_server: Any, tmp_path: Path
) -> None:
    server = await make_server()
    acked: list[str] = []
    warmed_up = asyncio.Event()
    more_acked = threading.Event()
    wanted_during_backup = [0]
    stop = asyncio.Event()

    async def writer(n: int) -> None:
        await create(server, f"w{n}")
        for i in range(5000):  # bounded; ends much earlier when told to stop
            if stop.is_set():
                return
            await append(server, f"w{n}", f"w{n}-{i}")
            acked.append(f"w{n}-{i}")
            if len(acked) >= 400:
                warmed_up.set()
            if wanted_during_backup[0] and len(acked) >= wanted_during_backup[0]:
                more_acked.set()

    writers = [asyncio.create_task(writer(n)) for n in range(WRITERS)]
    await asyncio.wait_for(warmed_up.wait(), TIMEOUT)
    acked_before = set(acked)
    # The first backup step waits until writers have committed 50 more messages, so writes
    # and the backup certainly overlap (a deterministic handshake, not a sleep).
    wanted_during_backup[0] = len(acked) + 50

    class WaitOnce(Progress):
        def update(self, done: int, total: int | None = None) -> None:
            if not more_acked.is_set():
                assert more_acked.wait(TIMEOUT), "writers stalled during the backup"
            super().update(done, total)

    destination = tmp_path / "backup.db"
    revision = await asyncio.to_thread(
        backup_database, server.database, destination,
        progress=WaitOnce("backup", 0, enabled=False), pages_per_step=4)
    stop.set()
    await asyncio.gather(*writers)
    assert len(acked) > wanted_during_backup[0] - 1  # writers went on during the backup

    copy = sqlite3.connect(destination)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = {row[0] for row in copy.execute("SELECT message_id FROM messages")}
        copied_revision = int(copy.execute(
            "SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])
    finally:
        copy.close()
    assert acked_before <= stored
    assert copied_revision == revision
    assert len(stored) < len(acked)  # later writes are not in it: a snapshot, not a mirror
    assert await consistency_of(destination) == []


@SQLITE
async def test_restore_refuses_a_database_a_server_holds(make_server: Any, tmp_path: Path) -> None:
    server = await make_server()
    await create(server, "kept")
    await append(server, "kept", "m1")
    backup = tmp_path / "b.db"
    await asyncio.to_thread(backup_database, server.database, backup)
    await create(server, "after-backup")
    with pytest.raises(DatabaseInUse, match="in use"):
        restore_database(backup, server.database, force=True)

    database = server.database
    await server.close()
    with pytest.raises(MaintenanceError, match="--force"):
        restore_database(backup, database)
    restore_database(backup, database, force=True)
    again = await make_server(database=database)
    found = await again.sessions.GetSession(session_service_pb2.GetSessionRequest(
        session_id="kept"))
    assert found.session.message_count == 1
    with pytest.raises(Exception, match="not found"):
        await again.sessions.GetSession(session_service_pb2.GetSessionRequest(
            session_id="after-backup"))
    assert await again.check_consistency() == []


def test_backup_never_overwrites_and_restore_checks_its_source(tmp_path: Path) -> None:
    existing = tmp_path / "exists.db"
    existing.write_bytes(b"")
    with pytest.raises(MaintenanceError, match="exists"):
        backup_database(existing, existing)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(MaintenanceError, match="not a SQLite database"):
        restore_database(garbage, tmp_path / "target.db")
    with pytest.raises(MaintenanceError, match="does not exist"):
        backup_database(tmp_path / "absent.db", tmp_path / "copy.db")
