"""Servers the benchmarks start, the HTTP clients that time them, and what /proc says about them.

Every server binds 127.0.0.1 on a free port in its own process group, must answer ``GET
ready_path`` with 200 before anything is timed, and is always stopped (SIGTERM to the group,
then SIGKILL). wrk is the load generator: a C client that adds almost nothing of its own, where
``http.client`` spends about a tenth of a millisecond of Python per request on the same cores.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks._harness import ROOT, Timing

HOST = "127.0.0.1"  # never anything else: the benchmarks only talk to their own servers
JSON = {"Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- /proc -----------------------------------------------------------------------------------------


def _status_kb(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # the process ended between listing and reading
        return 0
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces; the parent pid follows its closing ")".
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def workers(root: int) -> list[int]:
    """The processes of ``root``'s tree that serve requests.

    uvicorn with ``--workers N > 1`` spawns its workers through multiprocessing (``spawn_main``
    in their command line) under a supervisor; with one worker the uvicorn process itself
    serves (``mlflow models serve`` starts it as a child).
    """
    tree = process_tree(root)
    spawned = [p for p in tree if "spawn_main" in _cmdline(p)]
    return spawned or [p for p in tree if "uvicorn" in _cmdline(p)] or [root]


def memory_mb(root: int) -> dict[str, Any]:
    """Resident memory of each worker now (VmRSS) and at its peak (VmHWM), and of the tree."""
    pids = process_tree(root)
    serving = workers(root)
    return {
        "workers": len(serving),
        "worker_rss_mb": [round(_status_kb(p, "VmRSS") / 1024, 1) for p in serving],
        "worker_peak_rss_mb": [round(_status_kb(p, "VmHWM") / 1024, 1) for p in serving],
        "tree_rss_mb": round(sum(_status_kb(p, "VmRSS") for p in pids) / 1024, 1),
        "processes": len(pids),
    }


# -- servers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A server process we started (its own process group) and how long it took to be ready."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    startup_s: float


def _get_status(port: int, path: str) -> int | None:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we created, SIGKILL it if it has not gone in 15 s."""
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)
    # Children (mlflow's uvicorn, uvicorn's workers) may outlive a parent that exited first.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def server(
    name: str, cmd: list[str], *, env: dict[str, str], cwd: Path, ready_path: str, port: int
) -> Iterator[Server]:
    """Start ``cmd`` in a new session, wait until ``GET ready_path`` is 200, always stop it."""
    log_path = cwd / f"{name}.log"
    with log_path.open("wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = t0 + 180.0
            while _get_status(port, ready_path) != 200:
                if proc.poll() is not None or time.perf_counter() > deadline:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} did not become ready; log tail:\n{tail}")
                time.sleep(0.1)
            yield Server(name, proc, port, time.perf_counter() - t0)
        finally:
            _stop(proc)


# -- http.client -----------------------------------------------------------------------------------


def post(
    conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    conn.request("POST", path, body=body, headers={**JSON, **headers})
    resp = conn.getresponse()
    return resp.status, resp.read()


def first_ok(port: int, path: str, body: bytes, headers: dict[str, str]) -> Any:
    """The server's first answer to ``body``, parsed; raises unless it is 200."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        status, data = post(conn, path, body, headers)
    finally:
        conn.close()
    if status != 200:
        raise RuntimeError(f"POST {path} answered {status} before timing")
    return json.loads(data)


def sequential(
    port: int,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    *,
    n: int,
    warmup: int,
) -> Timing:
    """Per-request wall time over one keep-alive connection (http.client sets TCP_NODELAY)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    sent = {**JSON, **headers} if body is not None else headers
    times = []
    try:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            resp.read()
            elapsed = time.perf_counter() - t0
            if resp.status != 200:
                raise RuntimeError(f"{method} {path} answered {resp.status} during timing")
            if i >= warmup:
                times.append(elapsed)
    finally:
        conn.close()
    return Timing(f"{method} {path}", len(times), min(times), statistics.median(times))


# -- wrk -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkRun:
    """One wrk run, parsed from its text output (latencies in ms)."""

    requests_per_s: float
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int]


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_wrk(text: str) -> WrkRun:
    """Requests/s, request count, p50/p99, non-2xx and socket errors from ``wrk --latency``."""

    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.MULTILINE)
        if m is None:
            raise ValueError(f"wrk output has no {pct}% latency line")
        return float(m.group(1)) * _UNIT_MS[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    count = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text)
    if rps is None or count is None:
        raise ValueError("wrk output has no Requests/sec or request count line")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    keys = ("connect", "read", "write", "timeout")
    return WrkRun(
        requests_per_s=float(rps.group(1)),
        requests=int(count.group(1)),
        duration_s=float(count.group(2)) * _UNIT_MS[count.group(3)] / 1e3,
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors={k: int(sock.group(i + 1)) if sock else 0 for i, k in enumerate(keys)},
    )


def ensure_wrk() -> str:
    """wrk's version line, installing Debian's package first if wrk is missing."""
    subprocess.run(["bash", str(ROOT / "scripts" / "ensure-tool.sh"), "wrk"], check=True)
    return subprocess.run(
        ["wrk", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[0]


def wrk_script(path: Path, body_file: Path, headers: dict[str, str]) -> Path:
    """A wrk Lua script posting ``body_file`` with ``headers``."""
    # Lua long brackets need no escaping; the temporary path holds no "]==]".
    path.write_text(
        f"local f = assert(io.open([==[{body_file}]==], 'rb'))\n"
        'wrk.method = "POST"\n'
        + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in {**JSON, **headers}.items())
        + "wrk.body = f:read('*a')\n"
        "f:close()\n"
    )
    return path


def wrk(
    port: int, path: str, script: Path, duration_s: int, *, threads: int, connections: int
) -> WrkRun:
    cmd = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency",
        # wrk's default 2 s timeout drops mlflow's slowest requests from the latency figures.
        "--timeout", "30s", "-s", str(script), f"http://{HOST}:{port}{path}",
    ]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=duration_s + 120
    ).stdout
    return parse_wrk(out)


def wrk_summary(runs: list[WrkRun]) -> dict[str, Any]:
    rps = [r.requests_per_s for r in runs]
    return {
        "requests_per_s": {"min": round(min(rps), 1), "median": round(statistics.median(rps), 1)},
        "p50_ms_median": round(statistics.median(r.p50_ms for r in runs), 3),
        "p99_ms_median": round(statistics.median(r.p99_ms for r in runs), 3),
        "non_2xx": sum(r.non_2xx for r in runs),
        "socket_errors": sum(sum(r.socket_errors.values()) for r in runs),
        "runs": [asdict(r) for r in runs],
    }
