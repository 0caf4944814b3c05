"""A database outage: the store's routes answer 503 with Retry-After quickly, POST /v1/risk
keeps serving, the service starts with the database down, and the store comes back by itself.

The real PostgreSQL of the session (tests/conftest.py) is reached through a loopback TCP proxy
that the test cuts and restores: the server itself is shared and stays up.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.conftest import free_port
from tests.service.conftest import Registry
from tests.service.test_clients_api import a_client, post_sessions, store_app

HOST = "127.0.0.1"


class Proxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``; ``down()`` closes the listener and
    every open connection (as a database host going away), ``up()`` listens again."""

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self.target = target
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def up(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        if self._listener is not None:
            # shutdown wakes the thread blocked in accept(); close alone leaves it listening.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection((HOST, self.target))
            with self._lock:
                self._sockets |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def proxied(url: str) -> Iterator[tuple[Proxy, str]]:
    parsed = make_url(url)
    proxy = Proxy(int(parsed.port or 5432))
    try:
        yield proxy, parsed.set(port=proxy.port).render_as_string(hide_password=False)
    finally:
        proxy.down()


def _until(check, timeout: float = 20.0) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``check()`` holds (fails after ``timeout``)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.2)
    return time.monotonic() - started


def test_outage_503_while_risk_serves_and_recovery(
    registry: Registry, dev_key_dir: Path, pg_store_url: str
) -> None:
    body = a_client(registry, 3)
    risk_url = f"/v1/clients/{body['client_id']}/risk"
    # Started with the database unreachable.
    with (
        proxied(pg_store_url) as (proxy, url),
        store_app(registry, dev_key_dir, url, store_connect_timeout_s=2) as api,
    ):
        assert api.post("/v1/risk", json=body).status_code == 200
        started = time.monotonic()
        down = post_sessions(api, body, body["sessions"], first=True)
        assert down.status_code == 503 and down.headers["Retry-After"] == "5"
        assert time.monotonic() - started < 5

        proxy.up()  # back: migrated and served without a restart
        _until(lambda: post_sessions(api, body, body["sessions"][:2],
                                     first=True).status_code == 200)  # fmt: skip
        assert api.get(risk_url).json()["sessions_stored"] == 2

        proxy.down()  # gone while pooled connections are open
        started = time.monotonic()
        gone = api.get(risk_url)
        assert gone.status_code == 503 and gone.headers["Retry-After"] == "5"
        assert time.monotonic() - started < 5
        assert post_sessions(api, body, body["sessions"], first=False).status_code == 503
        assert api.post("/v1/risk", json=body).status_code == 200

        proxy.up()
        _until(lambda: api.get(risk_url).status_code == 200)
        # Nothing of the refused posts was stored.
        assert api.get(risk_url).json()["sessions_stored"] == 2
