"""Run the application under uvicorn on a socket bound here, so that the address (and a free port
picked with port 0) is known and printed before the first request."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterable

import uvicorn

from fewsight.errors import FewsightError
from fewsight.serve.app import create_app
from fewsight.serve.guards import is_loopback
from fewsight.serve.session import Session


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one), with Nagle's algorithm off.

    The socket is made with protocol IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on the connections
    it accepts only when their protocol says TCP, and without it every answer on a keep-alive
    connection waits about 40 ms for the client's delayed acknowledgement."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as error:
        raise FewsightError(
            f"cannot listen on {host}:{port} ({error.strerror}); pick another --port"
        ) from error
    sock.listen(64)
    return sock


def serve(
    session: Session, host: str = "127.0.0.1", port: int = 8765, allow_hosts: Iterable[str] = ()
) -> None:
    """Serve `session` on host:port until Ctrl-C. It answers requests addressed to this machine's
    loopback names, to `host`, to the names `allow_hosts` and, if `host` is not a loopback address,
    to any IP address: a page of another site cannot reach it by DNS rebinding."""
    allow_hosts = tuple(allow_hosts)
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if not is_loopback(host):
        names = ", ".join(allow_hosts) or "none; allow one with --allow-host NAME"
        print(
            f"fewsight serve: listening on {host}: other machines can reach it, with no password, by "
            f"IP address or an allowed host name ({names})",
            file=sys.stderr,
        )
    print(f"fewsight serve: http://{shown}:{bound}/ (Ctrl-C to stop)", flush=True)
    app = create_app(session, host, allow_hosts)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
