"""The WeChat API clients: one per account, all on one TLS context."""

from __future__ import annotations

from wxhook.server.wechat_api import new_http_client


async def test_account_clients_share_one_tls_context() -> None:
    # Each account of an accounts file has its own client (its own pool: one account's
    # hanging upstream holds only its connections); the CA bundle is read once for all.
    clients = [new_http_client(timeout=t) for t in (1.0, 3.0, 3.0)]
    try:
        contexts = {id(c._transport._pool._ssl_context) for c in clients}  # type: ignore[attr-defined]
        pools = {id(c._transport._pool) for c in clients}  # type: ignore[attr-defined]
        assert len(contexts) == 1
        assert len(pools) == 3
    finally:
        for c in clients:
            await c.aclose()
