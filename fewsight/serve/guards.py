"""Keep other web sites out of the local server: requests must name this machine as their host (no
DNS rebinding), and nothing that changes state may come from a page of another origin."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ["localhost", "127.0.0.1", "::1", "[::1]"]


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class SameOrigin:
    """Refuse requests that change state (POST, DELETE) sent by a page of another origin: a web page
    the user visits could otherwise post to the local server (browsers send such simple requests)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != headers.get("host"):
                response = JSONResponse({"error": f"requests from {origin} are refused"}, status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def guards(host: str) -> list[Middleware]:
    """The middleware for a server bound to `host`: on a loopback address, only loopback host names."""
    hosts = [*LOOPBACK_NAMES, host] if is_loopback(host) else ["*"]
    return [Middleware(TrustedHostMiddleware, allowed_hosts=hosts), Middleware(SameOrigin)]
