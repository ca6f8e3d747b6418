"""One MCP session served by two daemons of one fleet (same Redis prefix). The HTTP client
sends each request to the daemon `target` names: the session is opened at A, called at B
(restored from Redis), then a long call starts at A; at its first progress notification the
script prints {"step": "kill_a"} and points at B, the test kills A, and the SDK resumes the
dropped stream at B with Last-Event-ID. Prints the answers and the job ids.

Usage: two_daemons.py URL_A URL_B TOKEN
"""

import re
import sys

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from common import emit, http_client, meta_of, text_of


class Switch(httpx2.AsyncBaseTransport):
    """Sends every request to the port of the daemon currently chosen."""

    def __init__(self, ports):
        self.ports = ports
        self.current = "a"
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request):
        request.url = request.url.copy_with(port=self.ports[self.current])
        return await self.inner.handle_async_request(request)

    async def aclose(self):
        await self.inner.aclose()


async def main():
    url_a, url_b, token = sys.argv[1], sys.argv[2], sys.argv[3]
    switch = Switch({"a": httpx2.URL(url_a).port, "b": httpx2.URL(url_b).port})
    async with http_client(token, transport=switch) as http, streamable_http_client(url_a, http_client=http) as (
        read,
        write,
    ):
        async with ClientSession(read, write) as session:
            await session.initialize()
            r = await session.call_tool("test_echo", {"at": "a"})
            emit(step="at_a", text=text_of(r), is_error=r.is_error)

            switch.current = "b"
            r = await session.call_tool("test_echo", {"at": "b"})
            emit(step="at_b", text=text_of(r), is_error=r.is_error)

            switch.current = "a"
            progress = []

            async def on_progress(value, total, message):
                progress.append({"progress": value, "message": message})
                if switch.current == "a" and re.search(r"call-[0-9a-f]{32}", message or ""):
                    switch.current = "b"
                    emit(step="kill_a")

            r = await session.call_tool(
                "test_echo", {"at": "resumed", "delay_ms": 2500}, progress_callback=on_progress
            )
            emit(
                step="resumed",
                text=text_of(r),
                is_error=r.is_error,
                job_id=meta_of(r).get("exai/job_id"),
                progress=progress,
            )


anyio.run(main)
