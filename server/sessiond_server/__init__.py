"""sessiond server: the gRPC services, the storage behind them and the watch hub.

The package is layered so that data flows one way: an RPC is validated and
authorised in ``api``, becomes one store transaction in ``store``, and the
committed change is fanned out by ``watch`` to subscribers.
"""
