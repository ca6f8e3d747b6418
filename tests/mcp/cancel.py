"""A cancelled tools/call: starts test_echo with a long delay, waits for its first progress
notification (which names the job), then cancels the request; the SDK sends
notifications/cancelled. Prints the job id.

Usage: cancel.py URL TOKEN
"""

import re

import anyio
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from common import args, emit, http_client


async def main():
    url, token = args()
    job = {}
    started = anyio.Event()

    async def on_progress(progress, total, message):
        found = re.search(r"call-[0-9a-f]{32}", message or "")
        if found and "id" not in job:
            job["id"] = found.group(0)
            started.set()

    async with http_client(token) as http, streamable_http_client(url, http_client=http) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            async with anyio.create_task_group() as tg:

                async def call():
                    await session.call_tool("test_echo", {"delay_ms": 30000}, progress_callback=on_progress)
                    job["finished"] = True

                tg.start_soon(call)
                with anyio.fail_after(20):
                    await started.wait()
                tg.cancel_scope.cancel()
            emit(step="cancelled", job_id=job["id"], finished=job.get("finished", False))
            # The session goes on after a cancel.
            r = await session.call_tool("test_echo", {"after": "cancel"})
            emit(step="after", is_error=r.is_error)


anyio.run(main)
