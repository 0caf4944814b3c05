"""The JSON log lines: written off the request path, and never a traceback or a value."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A process that configures the service's logging, logs a line with fields and an exception
# whose message quotes a value, and exits: every queued line must reach stderr at exit.
SCRIPT = textwrap.dedent(
    """
    import logging
    from service.logs import configure_logging

    configure_logging("INFO")
    log = logging.getLogger("service.test")
    for i in range(500):
        log.info("request", extra={"fields": {"i": i, "route": "/v1/risk"}})
    try:
        raise ValueError("rating 7.3579 of client c-SECRET")
    except ValueError:
        log.exception("unhandled error", extra={"fields": {"request_id": "r-1"}})
    log.debug("not at INFO")
    """
)


def test_queued_lines_are_all_written_at_exit_as_json_without_tracebacks() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [d["i"] for d in lines[:-1]] == list(range(500))  # none lost, in order
    last = lines[-1]
    assert (last["msg"], last["error"], last["request_id"]) == (
        "unhandled error",
        "ValueError",
        "r-1",
    )
    assert "SECRET" not in done.stderr and "7.3579" not in done.stderr
    assert "Traceback" not in done.stderr and "not at INFO" not in done.stderr
    assert {d["logger"] for d in lines} == {"service.test"}


def test_reconfiguring_replaces_the_listener_and_keeps_one_handler() -> None:
    from service import logs

    try:
        logs.configure_logging("WARNING")
        first = logs._listener
        logs.configure_logging("WARNING")
        assert logs._listener is not first and first is not None
        assert len(logging.getLogger("service").handlers) == 1
    finally:
        logs._stop_listener()
        for name in ("service", "uvicorn", "uvicorn.error"):
            logger = logging.getLogger(name)
            logger.handlers[:] = []
            logger.propagate = True
            logger.setLevel(logging.NOTSET)
        logging.getLogger("uvicorn.access").disabled = False


def test_the_writer_writes_queued_lines_together_on_its_timer() -> None:
    import queue

    from service import logs

    class Stream:
        def __init__(self) -> None:
            self.writes: list[str] = []

        def write(self, text: str) -> None:
            self.writes.append(text)

        def flush(self) -> None:
            pass

    stream = Stream()
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()
    writer = logs._LineWriter(lines, stream, interval_s=30.0)
    writer.start()
    try:
        for i in range(100):
            lines.put(f"line {i}")
        # Nothing is written per line: the writer waits for its timer (or stop).
        writer._stopping.wait(0.2)
        assert stream.writes == []
    finally:
        writer.stop()
    # One write for the whole batch, every line in order, none lost.
    assert stream.writes == ["".join(f"line {i}\n" for i in range(100))]
    assert writer._thread is None
