"""Keep other web sites out of the server: requests must name it by an allowed host (no DNS
rebinding), nothing that changes state may come from a page of another origin, no page may frame it,
and no request body may pass its limit. Every refusal is JSON {"error": message}."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fewsight.serve.uploads import Limits, UploadError, size_limit

LOOPBACK_NAMES = ["localhost", "127.0.0.1", "::1"]
UPLOAD_PATHS = re.compile(r"/api/predict|/api/classes/[^/]+/images")  # the routes that take images
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
        "frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def is_address(host: str) -> bool:
    """Whether `host` is an IP address rather than a name."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def host_name(header: str) -> str:
    """The host of a Host header, without its port or an IPv6 address's brackets, in lower case."""
    if header.startswith("["):
        return header[1 : header.find("]")].lower() if "]" in header else header.lower()
    return header.rsplit(":", 1)[0].lower() if header.count(":") == 1 else header.lower()


async def _refuse(scope: Scope, receive: Receive, send: Send, message: str, status: int) -> None:
    await JSONResponse({"error": message}, status_code=status)(scope, receive, send)


class SecurityHeaders:
    """Add `SECURITY_HEADERS` to every answer: no site may frame the page, and no answer is read as
    another type than the one it declares."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in names)]
            await send(message)

        await self.app(scope, receive, send_secured if scope["type"] == "http" else send)


class AllowedHosts:
    """Answer only requests whose Host is an allowed name or an IP address. A page on a site the user
    visits can make its name resolve to this machine (DNS rebinding) and then talk to the server as
    its own origin; its Host then carries that site's name, which is not allowed. An IP address in
    Host cannot be rebound, so any is allowed on a server that listens beyond this machine."""

    def __init__(self, app: ASGIApp, host: str, allow_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.names = {name.lower().strip("[]") for name in [*LOOPBACK_NAMES, host, *allow_hosts]}
        self.any_address = not is_loopback(host)

    def allowed(self, name: str) -> bool:
        if name in self.names:
            return True
        return is_address(name) and (self.any_address or is_loopback(name))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = Headers(scope=scope).get("host", "")
            if not self.allowed(host_name(header)):
                if self.any_address:
                    fix = "open it by its IP address, or serve it with --allow-host NAME to allow a name"
                else:
                    port = (scope.get("server") or ("", "PORT"))[1]
                    fix = f"open it as http://localhost:{port}/, or serve it with --allow-host NAME"
                message = f"this server does not answer to the host {header!r}; {fix}"
                await _refuse(scope, receive, send, message, 400)
                return
        await self.app(scope, receive, send)


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
                message = f"requests from {origin} are refused; use the page this server serves"
                await _refuse(scope, receive, send, message, 403)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse (413) a request body over its limit as it streams in, before it is read whole: images
    (multipart/form-data, to the routes that take them) up to `Limits.request_bytes`, any other body
    up to `Limits.json_bytes`. A declared Content-Length over the limit is refused before a byte of
    the body is read."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        multipart = headers.get("content-type", "").startswith("multipart/form-data")
        multipart = multipart and UPLOAD_PATHS.fullmatch(scope["path"]) is not None
        limit = self.limits.request_bytes if multipart else self.limits.json_bytes
        what = "the upload" if multipart else "the request body"
        fix = "send fewer or smaller images at once" if multipart else 'send JSON as {"name": "a class name"}'
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            message = f"{what} is {int(declared):,} bytes, over the limit of {size_limit(limit)}; {fix}"
            await _refuse(scope, receive, send, message, 413)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise UploadError(f"{what} is over the limit of {size_limit(limit)}; {fix}", 413)
            return message

        await self.app(scope, counted, send)


def guards(host: str, limits: Limits, allow_hosts: Iterable[str] = ()) -> list[Middleware]:
    """The middleware for a server bound to `host`, outermost first."""
    return [
        Middleware(SecurityHeaders),
        Middleware(AllowedHosts, host=host, allow_hosts=tuple(allow_hosts)),
        Middleware(SameOrigin),
        Middleware(BodyLimit, limits=limits),
    ]
