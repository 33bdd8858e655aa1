"""fewsight serve's guards (issue 30): host names that DNS rebinding cannot use, security headers on
every answer, request bodies capped while they stream in, and every error as JSON."""

from __future__ import annotations

import json

import pytest

from fewsight.serve import Limits, Session
from tests.serving import post_json, raw, request, running

HEADERS = {
    "content-security-policy": "frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
}


@pytest.fixture
def omniglot():
    with running(Session("omniglot", "cpu", Limits(json_bytes=1000))) as url:
        yield url


def test_dns_rebinding_cannot_drive_a_server_open_to_other_machines():
    """Listening on 0.0.0.0, a rebound page (Host and Origin agree on evil.example) is refused; IP
    addresses, loopback names and the names allowed by --allow-host are answered."""
    with running(Session("omniglot"), host="0.0.0.0", allow_hosts=("Lab-PC.lan",)) as url:
        port = url.rsplit(":", 1)[1]
        evil = f"evil.example:{port}"
        reply = post_json(f"{url}/api/classes", {"name": "a"}, Host=evil, Origin=f"http://{evil}")
        assert reply.status == 400
        assert reply.json()["error"] == (
            f"this server does not answer to the host '{evil}'; open it by its IP address, or serve it "
            "with --allow-host NAME to allow a name"
        )
        assert request(f"{url}/", headers={"Host": evil}).status == 400
        assert request(f"{url}/api/classes").json()["classes"] == []
        for host in (f"lab-pc.lan:{port}", f"192.168.1.20:{port}", f"[fe80::1]:{port}", f"localhost:{port}"):
            reply = post_json(f"{url}/api/classes", {"name": host}, Host=host, Origin=f"http://{host}")
            assert reply.status == 201, (host, reply.body)
    with running(Session("omniglot"), allow_hosts=("alias.test",)) as url:  # on 127.0.0.1
        assert request(f"{url}/api/model", headers={"Host": "alias.test"}).status == 200
        assert request(f"{url}/api/model", headers={"Host": "192.168.1.20"}).status == 400


def test_every_answer_carries_security_headers(omniglot):
    answers = [
        request(f"{omniglot}/"),
        request(f"{omniglot}/static/app.js"),
        request(f"{omniglot}/api/model"),
        request(f"{omniglot}/api/nothing"),
        request(f"{omniglot}/api/model", headers={"Host": "evil.example"}),
        post_json(f"{omniglot}/api/classes", {"name": "x" * 2000}),
    ]
    assert [a.status for a in answers] == [200, 200, 200, 404, 400, 413]
    for answer in answers:
        headers = {k.lower(): v for k, v in answer.headers.items()}
        for name, value in HEADERS.items():
            assert value in headers.get(name, ""), (answer.status, name)


def test_a_body_over_its_limit_is_refused_before_it_is_read_whole(omniglot):
    """A declared 200 MB body is refused before a byte of it is read; a chunked one (no length) as
    soon as it passes the limit, while the rest is still to come."""
    head = "POST /api/classes HTTP/1.1\nHost: localhost\nContent-Type: application/json\n"
    declared = raw(omniglot, head + f"Content-Length: {200 * 1024 * 1024}\n", b'{"name": "')
    assert declared.status == 413
    assert declared.json()["error"] == (
        f"the request body is {200 * 1024 * 1024:,} bytes, over the limit of 1,000 bytes; "
        'send JSON as {"name": "a class name"}'
    )
    chunk = b'{"name": "' + b"x" * 1500
    chunked = raw(
        omniglot, head + "Transfer-Encoding: chunked\n", f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    )
    assert chunked.status == 413
    assert "the request body is over the limit of 1,000 bytes" in chunked.json()["error"]
    upload = "POST /api/predict HTTP/1.1\nHost: localhost\nContent-Type: multipart/form-data; boundary=b\n"
    limit = Limits().request_bytes
    over = raw(omniglot, upload + f"Content-Length: {limit + 1}\n", b"--b\r\n")
    assert over.status == 413
    assert over.json()["error"].startswith(
        f"the upload is {limit + 1:,} bytes, over the limit of {limit:,} bytes (50 MB)"
    )
    images_elsewhere = (
        "POST /api/classes HTTP/1.1\nHost: localhost\nContent-Type: multipart/form-data; boundary=b\n"
    )
    assert raw(omniglot, images_elsewhere + "Content-Length: 1001\n", b"--b\r\n").status == 413
    assert request(f"{omniglot}/api/classes").json()["classes"] == []


def test_every_error_is_json(omniglot, monkeypatch):
    nested = request(f"{omniglot}/api/classes", "POST", b"[" * 100_000, {"Content-Type": "application/json"})
    assert nested.status == 413  # over the 1,000 bytes of this server; under the default 64 KiB:
    with running(Session("omniglot")) as url:
        nested = request(f"{url}/api/classes", "POST", b"[" * 60_000, {"Content-Type": "application/json"})
        assert nested.status == 400
        assert nested.json() == {"error": 'the JSON is nested too deeply; send {"name": "a class name"}'}
    assert request(f"{omniglot}/api/adapt").json() == {"error": "GET /api/adapt is not allowed; use POST"}
    assert request(f"{omniglot}/static/app.js", "POST").json() == {
        "error": "POST /static/app.js is not allowed; use GET, HEAD"
    }
    assert (
        request(f"{omniglot}/static/nothing.js").json()["error"].startswith("there is no /static/nothing.js")
    )
    assert (
        request(f"{omniglot}/", headers={"Host": "evil.example"})
        .json()["error"]
        .startswith("this server does not answer to the host 'evil.example'")
    )
    monkeypatch.setattr(Session, "state", lambda self: json.loads("{"))
    crash = request(f"{omniglot}/api/classes")
    assert crash.status == 500 and crash.headers["content-type"] == "application/json"
    assert crash.headers["x-frame-options"] == "DENY"
    error = crash.json()["error"]
    assert error.startswith("the server failed (JSONDecodeError: ") and "\n" not in error
    assert error.endswith("please report it as a bug of fewsight serve")
