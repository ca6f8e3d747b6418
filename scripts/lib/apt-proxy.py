#!/usr/bin/env python3
"""A small forwarding HTTP proxy for apt and pip inside scripts/fresh-check's chroot.

The chroot runs in a network namespace of its own, so it reaches nothing of the host but this
proxy, which listens on the host end of the namespace's veth pair. apt and pip send it absolute
`http://` URLs (Acquire::http::Proxy, pip's `proxy`); it forwards GET and HEAD requests to the
allowed hosts only and answers 403 to anything else. No CONNECT, no other scheme, no other port
than 80.

Two kinds of allowed hosts:
- --allow HOST: fetched as asked, over plain HTTP (the Debian mirrors, whose packages apt
  verifies with the archive's signatures).
- --https HOST: PyPI (pypi.org, files.pythonhosted.org) and the npm registry
  (registry.npmjs.org). The chroot asks for http://HOST/...;
  the proxy fetches https://HOST/... with certificate verification, and in the package index
  (PyPI's /simple/ pages, HTML or JSON; npm's package documents) it rewrites
  https://<an --https host>/ links to http:// so that pip and npm fetch the files through the
  proxy too. pip still checks every file against the sha256 the index (fetched over verified
  TLS) gives for it, npm against the integrity hash of the package document.

Usage: apt-proxy.py --listen ADDRESS --port PORT --allow HOST [--allow HOST ...]
                    [--https HOST ...]
"""

import argparse
import http.client
import http.server
import shutil
import ssl
import sys
import urllib.parse

# Headers that describe one connection, not the resource: never forwarded.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}

# Seconds the proxy waits for an upstream connection or read before it gives up (apt retries).
UPSTREAM_TIMEOUT_SECS = 60


class Handler(http.server.BaseHTTPRequestHandler):
    """Forwards one client connection's requests, in order, to the allowed mirrors."""

    protocol_version = "HTTP/1.1"
    allowed: frozenset = frozenset()
    https: frozenset = frozenset()

    def do_GET(self):  # noqa: N802 (the name http.server dispatches to)
        self.forward()

    def do_HEAD(self):  # noqa: N802
        self.forward()

    def forward(self):
        url = urllib.parse.urlsplit(self.path)
        hosts = self.allowed | self.https
        if url.scheme != "http" or url.hostname not in hosts or (url.port or 80) != 80:
            self.send_error(
                403, "only http://HOST/ of " + ", ".join(sorted(hosts)) + " is forwarded"
            )
            return
        target = (url.path or "/") + ("?" + url.query if url.query else "")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = url.hostname
        if url.hostname in self.https:
            self.forward_https(url.hostname, target, headers)
            return
        upstream = http.client.HTTPConnection(url.hostname, 80, timeout=UPSTREAM_TIMEOUT_SECS)
        try:
            upstream.request(self.command, target, headers=headers)
            response = upstream.getresponse()
        except OSError as err:
            upstream.close()
            self.send_error(502, f"{url.hostname}: {err}")
            return
        try:
            self.send_response_only(response.status, response.reason)
            length = response.getheader("Content-Length")
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            has_body = self.command != "HEAD" and response.status not in (204, 304)
            if has_body and length is None:
                # The body ends where the connection does.
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if has_body:
                shutil.copyfileobj(response, self.wfile, 64 * 1024)
            self.log_request(response.status)
        finally:
            upstream.close()

    def forward_https(self, host, target, headers):
        """GET/HEAD https://HOST/TARGET (certificate verified); index pages have their links to
        the --https hosts rewritten to http://, so the files come through this proxy too."""
        # PyPI's /simple/ pages, and the npm registry's package documents (anything but a
        # tarball), name the files to fetch with https:// links.
        index = target.startswith("/simple/") or (
            host == "registry.npmjs.org" and not target.endswith(".tgz")
        )
        if index:
            # The body is rewritten: ask for it uncompressed.
            headers["Accept-Encoding"] = "identity"
        upstream = http.client.HTTPSConnection(
            host, 443, timeout=UPSTREAM_TIMEOUT_SECS, context=ssl.create_default_context()
        )
        try:
            upstream.request(self.command, target, headers=headers)
            response = upstream.getresponse()
            body = response.read() if index and self.command != "HEAD" else None
        except OSError as err:
            upstream.close()
            self.send_error(502, f"{host}: {err}")
            return
        try:
            if body is not None:
                for other in self.https:
                    body = body.replace(f"https://{other}/".encode(), f"http://{other}/".encode())
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() in HOP_BY_HOP or (body is not None and name.lower() == "content-length"):
                    continue
                self.send_header(name, value)
            if body is not None:
                self.send_header("Content-Length", str(len(body)))
            elif response.getheader("Content-Length") is None and self.command != "HEAD":
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if body is not None:
                self.wfile.write(body)
            elif self.command != "HEAD" and response.status not in (204, 304):
                shutil.copyfileobj(response, self.wfile, 64 * 1024)
            self.log_request(response.status)
        finally:
            upstream.close()

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        sys.stderr.write("%s %s\n" % (self.address_string(), format % args))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="the address to listen on")
    parser.add_argument("--port", type=int, required=True, help="the TCP port to listen on")
    parser.add_argument(
        "--allow", action="append", required=True, help="a host requests may go to (repeatable)"
    )
    parser.add_argument(
        "--https",
        action="append",
        default=[],
        help="a host fetched over verified HTTPS, its index links rewritten (repeatable)",
    )
    args = parser.parse_args()
    Handler.allowed = frozenset(args.allow)
    Handler.https = frozenset(args.https)
    server = http.server.ThreadingHTTPServer((args.listen, args.port), Handler)
    server.daemon_threads = True
    hosts = ", ".join(args.allow + args.https)
    print(f"apt proxy on {args.listen}:{args.port} for {hosts}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
