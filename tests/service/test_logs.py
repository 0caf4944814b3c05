"""The JSON log lines: one per record, written as it happens, never a traceback or a value."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from service.audit import _is_time
from service.logs import configure_logging

ROOT = Path(__file__).resolve().parents[2]
SERVICE_LOGGERS = ("service", "uvicorn", "uvicorn.error")

# A process that configures the service's logging, logs lines with fields and an exception
# whose message quotes a value.
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

# A record logged, then the process killed at once: nothing runs after the call returns.
KILLED = textwrap.dedent(
    """
    import logging, os, signal
    from service.logs import configure_logging

    configure_logging("INFO")
    logging.getLogger("service.test").warning("last words", extra={"fields": {"n": 1}})
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_one_json_line_per_record_without_exception_text() -> None:
    done = _run(SCRIPT)
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
    assert all(_is_time(d["ts"]) for d in lines)  # the audit trail's time format


def test_a_line_logged_just_before_sigkill_is_on_stderr() -> None:
    done = _run(KILLED)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    (line,) = [json.loads(text) for text in done.stderr.splitlines()]
    assert (line["level"], line["msg"], line["n"]) == ("WARNING", "last words", 1)


@pytest.fixture
def restore_loggers():
    yield
    for name in SERVICE_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    logging.getLogger("uvicorn.access").disabled = False


def test_each_line_is_written_when_logged_and_reconfiguring_keeps_one_handler(
    monkeypatch, restore_loggers
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("WARNING")
    configure_logging("WARNING")
    for name in SERVICE_LOGGERS:
        assert len(logging.getLogger(name).handlers) == 1
    logging.getLogger("service.test").warning("first")
    assert json.loads(stream.getvalue())["msg"] == "first"  # already there, not queued
    logging.getLogger("service.test").info("below the level")
    assert stream.getvalue().count("\n") == 1


def test_uvicorn_s_access_log_is_disabled(restore_loggers) -> None:
    # It prints the raw path and the client's address; the request middleware logs the route.
    configure_logging("INFO")
    assert logging.getLogger("uvicorn.access").disabled
