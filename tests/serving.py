"""Test helpers for fewsight serve: a real server on a free loopback port, and plain HTTP requests."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import uvicorn

from fewsight.serve import Session, create_app
from fewsight.serve.server import bind


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@contextmanager
def running(session: Session, host: str = "127.0.0.1", allow_hosts: tuple[str, ...] = ()) -> Iterator[str]:
    """The session served by uvicorn in a thread on `host` (a free port); yields its base URL on
    127.0.0.1."""
    sock = bind(host, 0)
    server = uvicorn.Server(uvicorn.Config(create_app(session, host, allow_hosts), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def request(url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None) -> Reply:
    """One HTTP request; error statuses are returned, not raised."""
    call = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(call, timeout=60) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers), error.read())


def post_json(url: str, value: object, **headers: str) -> Reply:
    return request(url, "POST", json.dumps(value).encode(), {"Content-Type": "application/json", **headers})


def post_files(url: str, files: list[tuple[str, bytes]], field: str = "files") -> Reply:
    """POST files as multipart/form-data, as a browser's form does."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return request(url, "POST", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def raw(url: str, head: str, body: bytes = b"") -> Reply:
    """Send a request's head and the first bytes of its body on a plain socket, without finishing
    the body, and read the answer the server gives anyway."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        response = http.client.HTTPResponse(connection)
        response.begin()
        return Reply(response.status, dict(response.headers), response.read())
