"""What the driver scripts share: an HTTP client that sends the daemon's token, and JSON out."""

import json
import sys

import httpx2


def http_client(token, **kwargs):
    """An httpx2 client sending `Authorization: Bearer <token>` (no token: no header)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kwargs.pop("headers", {}))
    return httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120), **kwargs)


def emit(**fields):
    """One JSON line on stdout: what the Rust test reads."""
    print(json.dumps(fields, default=str), flush=True)


def text_of(result):
    """The text content of a CallToolResult, joined."""
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def meta_of(result):
    """The result's _meta as a dict."""
    meta = getattr(result, "meta", None)
    if meta is None:
        return {}
    return meta if isinstance(meta, dict) else meta.model_dump(by_alias=True)


def args():
    """The script's arguments: URL and token (an empty string for none)."""
    url = sys.argv[1]
    token = sys.argv[2] if len(sys.argv) > 2 else ""
    return url, token
