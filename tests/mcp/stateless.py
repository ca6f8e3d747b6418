"""The 2026-07-28 revision on the same /mcp: the SDK's Client in MODE — "2026-07-28" (pinned to
the stateless revision) or "auto" (the SDK's default: it probes server/discover, then speaks the
newest revision both sides know) — lists the tools and calls test_echo.

Usage: stateless.py URL TOKEN [MODE]
"""

import sys

import anyio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from common import args, emit, http_client, text_of


async def main():
    url, token = args()
    mode = sys.argv[3] if len(sys.argv) > 3 else "2026-07-28"
    async with http_client(token) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            tools = await client.list_tools()
            result = await client.call_tool("test_echo", {"stateless": True})
            emit(step="stateless", mode=mode, names=[t.name for t in tools.tools], text=text_of(result), is_error=result.is_error)


anyio.run(main)
