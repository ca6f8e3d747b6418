"""What /mcp refuses: a wrong token (401 with WWW-Authenticate: Bearer) and a foreign Origin
(403), seen by the SDK's client and on the HTTP status.

Usage: refusals.py URL TOKEN
"""

import anyio
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from common import args, emit, http_client

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
ACCEPT = {"Accept": "application/json, text/event-stream"}


async def sdk_fails(url, token, **kwargs):
    """Whether the SDK's client fails to initialize with this token and these headers."""
    try:
        with anyio.fail_after(20):
            async with http_client(token, **kwargs) as http, streamable_http_client(url, http_client=http) as (r, w):
                async with ClientSession(r, w) as session:
                    await session.initialize()
        return False
    except Exception:  # noqa: BLE001 (any failure to initialize counts)
        return True


async def main():
    url, token = args()
    async with http_client("wrong-token-wrong-token") as http:
        r = await http.post(url, json=INIT, headers=ACCEPT)
        emit(step="bad_token", status=r.status_code, challenge=r.headers.get("www-authenticate"))
    async with http_client(None) as http:
        r = await http.post(url, json=INIT, headers=ACCEPT)
        emit(step="no_token", status=r.status_code)
    async with http_client(token, headers={"Origin": "http://evil.example"}) as http:
        r = await http.post(url, json=INIT, headers=ACCEPT)
        emit(step="foreign_origin", status=r.status_code)
    emit(
        step="sdk",
        bad_token_fails=await sdk_fails(url, "wrong-token-wrong-token"),
        foreign_origin_fails=await sdk_fails(url, token, headers={"Origin": "http://evil.example"}),
        good_works=not await sdk_fails(url, token),
    )


anyio.run(main)
