"""/mcp with the official SDK's Streamable HTTP client (initialize handshake): list the tools,
call test_echo with a progress callback, a refused argument, an unknown tool, and several calls
in flight at once. Prints one JSON line per finding.

Usage: http_calls.py URL TOKEN
"""

import anyio
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp import MCPError

from common import args, emit, http_client, meta_of, text_of


async def main():
    url, token = args()
    async with http_client(token) as http, streamable_http_client(url, http_client=http) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            emit(step="initialize", protocol=init.protocol_version, server=init.server_info.name)

            tools = await session.list_tools()
            echo = next(t for t in tools.tools if t.name == "test_echo")
            emit(
                step="list",
                names=[t.name for t in tools.tools],
                echo_annotations=echo.annotations.model_dump(by_alias=True, exclude_none=True),
                echo_output_schema=echo.output_schema,
            )

            seen = []

            async def on_progress(progress, total, message):
                seen.append({"progress": progress, "message": message})

            result = await session.call_tool(
                "test_echo", {"text": "hello", "delay_ms": 1200}, progress_callback=on_progress
            )
            emit(
                step="call",
                text=text_of(result),
                structured=result.structured_content,
                is_error=result.is_error,
                job_id=meta_of(result).get("exai/job_id"),
                progress=seen,
            )

            bad = await session.call_tool("test_echo", {"delay_ms": "soon"})
            emit(step="invalid", is_error=bad.is_error, text=text_of(bad))

            try:
                await session.call_tool("no_such_tool", {})
                emit(step="unknown", error=None)
            except MCPError as e:
                emit(step="unknown", code=e.code, message=str(e))

            results = {}

            async def one(i):
                r = await session.call_tool("test_echo", {"i": i, "delay_ms": 300})
                results[i] = text_of(r)

            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(one, i)
            emit(step="concurrent", texts=[results[i] for i in range(8)])


anyio.run(main)
