"""Slow and idle clients against the real server (``alliance-risk serve``) on 127.0.0.1: every
connection that does not deliver its request in time is closed, and normal requests are served
meanwhile; the number of connections is bounded."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import Registry, bearer
from tests.service.helpers import request_for
from tests.service.serving import HOST, serving

HEADER_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 4.0
REQUEST_TIMEOUT_S = 1.0
#: Scheduling slack on 2 shared cores.
MARGIN_S = 1.5


def _connect(url: str) -> socket.socket:
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.setblocking(False)
    return sock


class _Peer:
    """One raw connection: what it sends over time, what it has read, and when it was closed."""

    def __init__(self, name: str, sock: socket.socket, dribble: bytes = b"") -> None:
        self.name, self.sock, self.dribble = name, sock, dribble
        self.received = b""
        self.closed_at: float | None = None
        self.started = time.monotonic()

    def poll(self, now: float, send: bool) -> None:
        if self.closed_at is not None:
            return
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self._closed(now)
                    return
                self.received += chunk
        except BlockingIOError:
            pass
        except OSError:
            self._closed(now)
            return
        if send and self.dribble:
            try:
                self.sock.send(self.dribble)
            except BlockingIOError:
                pass
            except OSError:
                self._closed(now)

    def _closed(self, now: float) -> None:
        self.closed_at = now
        self.sock.close()

    @property
    def open_for(self) -> float:
        assert self.closed_at is not None, f"{self.name} is still open"
        return self.closed_at - self.started


def _watch(peers: list[_Peer], seconds: float, every_s: float = 0.3) -> None:
    deadline = time.monotonic() + seconds
    last_send = 0.0
    while time.monotonic() < deadline and any(p.closed_at is None for p in peers):
        now = time.monotonic()
        send = now - last_send >= every_s
        if send:
            last_send = now
        for peer in peers:
            peer.poll(now, send)
        time.sleep(0.02)


@pytest.fixture
def slow_server(registry: Registry, tmp_path: Path, dev_key_dir: Path):
    env = {
        "ALLIANCE_RISK_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "ALLIANCE_RISK_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "ALLIANCE_RISK_KEEP_ALIVE_TIMEOUT_S": "1",
        "ALLIANCE_RISK_LIMIT_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
    }
    with serving(registry, tmp_path / "serve", dev_key_dir, env=env) as url:
        yield url


def test_idle_and_slow_connections_are_closed_while_requests_are_served(
    slow_server: str, registry: Registry, dev_key_dir: Path
) -> None:
    url = slow_server
    token = bearer(dev_key_dir)["Authorization"]
    peers = [_Peer(f"idle-{i}", _connect(url)) for i in range(3)]
    for i in range(3):  # slowloris: a header line every 0.3 s, never the blank line
        sock = _connect(url)
        sock.send(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        peers.append(_Peer(f"headers-{i}", sock, dribble=b"X-Slow: 1\r\n"))
    huge = _connect(url)  # one header line of 1 MB, sent at once
    huge.setblocking(True)
    with contextlib.suppress(OSError):  # closed by the server while sending: expected
        huge.sendall(b"GET /livez HTTP/1.1\r\nX-Big: " + b"a" * 1_000_000)
    huge.setblocking(False)
    peers.append(_Peer("huge-headers", huge))
    kept = _connect(url)  # one full request, then a second one dribbled on the same connection
    kept.setblocking(True)
    kept.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
    assert kept.recv(65536).startswith(b"HTTP/1.1 200")
    kept.setblocking(False)
    kept.send(b"GET /livez HTTP/1.1\r\n")
    peers.append(_Peer("keep-alive-headers", kept, dribble=b"X-Slow: 1\r\n"))
    unread = _connect(url)  # a body no route reads (404), trickled
    unread.send(b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    peers.append(_Peer("unread-body", unread, dribble=b"x"))
    timed_out = _connect(url)  # a body the route waits for, trickled past the request timeout
    timed_out.send(
        b"POST /v1/risk HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: " + token.encode() + b"\r\nContent-Length: 100000\r\n\r\n{"
    )
    peers.append(_Peer("body-after-504", timed_out, dribble=b" "))

    body = request_for(registry.cohort, registry.cohort.clients["client_id"].iloc[0])
    served_meanwhile = []
    start = time.monotonic()
    with httpx.Client(base_url=url, timeout=5, headers={"Authorization": token}) as client:
        while time.monotonic() - start < HEADER_TIMEOUT_S:
            _watch(peers, 0.3)
            served_meanwhile.append(client.post("/v1/risk", json=body).status_code)
    _watch(peers, BODY_TIMEOUT_S + 2 * MARGIN_S)

    assert served_meanwhile and set(served_meanwhile) == {200}
    for peer in peers:
        limit = BODY_TIMEOUT_S if "body" in peer.name else HEADER_TIMEOUT_S
        assert peer.open_for < limit + MARGIN_S, (peer.name, peer.open_for)
    for peer in peers[:6]:
        assert peer.received == b"", peer.name  # closed without an answer
        assert peer.open_for > HEADER_TIMEOUT_S - 0.2, (peer.name, peer.open_for)
    assert peers[6].received.startswith(b"HTTP/1.1 431"), peers[6].received[:100]
    assert peers[6].open_for < MARGIN_S
    assert peers[-2].received.startswith(b"HTTP/1.1 404")
    late = peers[-1]
    assert late.received.startswith(b"HTTP/1.1 504"), late.received[:100]
    assert b"connection: close" in late.received.lower()
    # Closed with the 504, not at the body deadline.
    assert late.open_for < REQUEST_TIMEOUT_S + 1.0 < BODY_TIMEOUT_S, late.open_for
    assert httpx.get(f"{url}/livez").status_code == 200


def test_connections_beyond_the_bound_get_503(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    env = {"ALLIANCE_RISK_MAX_CONNECTIONS": "4", "ALLIANCE_RISK_HEADER_TIMEOUT_S": "30"}
    with serving(registry, tmp_path / "serve", dev_key_dir, env=env) as url:
        assert httpx.get(f"{url}/livez").status_code == 200
        held = [_connect(url) for _ in range(4)]
        try:
            time.sleep(0.3)  # let the server accept them
            r = httpx.get(f"{url}/livez", timeout=5)
            assert r.status_code == 503
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 5
        while httpx.get(f"{url}/livez").status_code != 200:
            assert time.monotonic() < deadline, "the bound did not free up"
            time.sleep(0.1)
