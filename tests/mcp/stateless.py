"""The stateless 2026-07-28 revision on the same /mcp: the SDK's Client pinned to it lists the
tools and calls test_echo without a session.

Usage: stateless.py URL TOKEN
"""

import anyio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from common import args, emit, http_client, text_of


async def main():
    url, token = args()
    async with http_client(token) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="2026-07-28") as client:
            tools = await client.list_tools()
            result = await client.call_tool("test_echo", {"stateless": True})
            emit(step="stateless", names=[t.name for t in tools.tools], text=text_of(result), is_error=result.is_error)


anyio.run(main)
