"""exai-mcp under the official SDK's stdio client: list the tools, call test_echo with a
progress callback, and cancel a long call.

Usage: stdio_bridge.py EXAI_MCP_BINARY DAEMON_MCP_URL TOKEN
"""

import re
import sys

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

from common import emit, text_of


async def main():
    binary, url, token = sys.argv[1], sys.argv[2], sys.argv[3]
    params = StdioServerParameters(command=binary, args=["--url", url], env={"EXAI_WS_TOKEN": token})
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        tools = await session.list_tools()
        emit(step="list", server=init.server_info.name, names=[t.name for t in tools.tools])

        seen = []

        async def on_progress(progress, total, message):
            seen.append({"progress": progress, "message": message})

        r = await session.call_tool("test_echo", {"via": "stdio", "delay_ms": 800}, progress_callback=on_progress)
        emit(step="call", text=text_of(r), is_error=r.is_error, structured=r.structured_content, progress=seen)

        job = {}
        started = anyio.Event()

        async def on_long(progress, total, message):
            found = re.search(r"call-[0-9a-f]{32}", message or "")
            if found and "id" not in job:
                job["id"] = found.group(0)
                started.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: session.call_tool("test_echo", {"delay_ms": 30000}, progress_callback=on_long))
            with anyio.fail_after(20):
                await started.wait()
            tg.cancel_scope.cancel()
        emit(step="cancelled", job_id=job["id"])


anyio.run(main)
