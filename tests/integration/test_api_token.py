"""PIT_API_TOKEN: with a token configured, every API route wants it - the views, the audit
log, the schema registry - and /health and /metrics do not (probes and scrapers). A missing
or wrong token is a 401 that reaches no handler."""

from __future__ import annotations

import aiohttp

from streams.app import Stack
from streams.config import Settings

TOKEN = "s3cret-token"


async def test_every_route_but_health_and_metrics_wants_the_token(tmp_path, free_port) -> None:
    port = free_port()
    settings = Settings(data_dir=tmp_path, env={"PIT_API_TOKEN": TOKEN})
    async with Stack(settings, http_port=port, progress=False, without={"host-monitor"}), \
            aiohttp.ClientSession() as http:

        async def status(path: str, token: str | None = None) -> int:
            headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
            async with http.get(f"http://127.0.0.1:{port}{path}", headers=headers) as reply:
                if reply.status == 401:
                    assert reply.headers["WWW-Authenticate"] == 'Bearer realm="pit"'
                    assert "PIT_API_TOKEN" in (await reply.json())["error"]
                return reply.status

        for path in ("/pool", "/executions", "/audit/verify", "/subjects", "/arbitration"):
            assert await status(path) == 401, path
            assert await status(path, "wrong") == 401, path
            assert await status(path, TOKEN[:-1]) == 401, path
            assert await status(path, TOKEN) in (200, 404), path  # 404: no data yet
        assert await status("/health") == 200
        assert await status("/metrics") == 200
