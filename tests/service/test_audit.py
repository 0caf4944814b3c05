"""The audit trail: record format, keyed client pseudonyms, and a JSON-lines file that stays whole
under concurrent threads and processes and after a SIGKILL mid-write (real files in tmp_path)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.audit import (
    AuditRecord,
    AuditRecordError,
    AuditWriteError,
    ClientRefs,
    client_ref,
    correlation_ref,
    load_or_create_key,
    utc_timestamp,
)
from service.audit_log import AuditLog, AuditSettings, JsonLinesAuditLog, records

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
ROOT = Path(__file__).resolve().parents[2]

# A writer process: appends records numbered from 0 until it has written `n` (or forever when
# n < 0), tagging each request_id with its name. Imports only service.audit (~0.2 s).
WRITER = textwrap.dedent(
    """
    import pathlib, sys, time
    from service.audit import AuditRecord, client_ref
    from service.audit_log import JsonLinesAuditLog

    path, name, n, policy = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    log = JsonLinesAuditLog(path, fsync=policy, fsync_interval_s=0.05)
    key = bytes(range(32))
    if len(sys.argv) > 5:  # start barrier: say ready, then wait for "go"
        barrier = pathlib.Path(sys.argv[5])
        (barrier / ("ready-" + name)).touch()
        while not (barrier / "go").exists():
            time.sleep(0.001)
    i = 0
    while n < 0 or i < n:
        log.write(AuditRecord(
            subject="therapist-" + name, clinic="clinic-a",
            client_ref=client_ref("clinic-a", f"c-{i:06d}", key), action="risk.read", outcome="ok",
            status=200, request_id=f"{name}-{i}", model_version="7",
        ))
        i += 1
    log.close()
    """
)


def _record(i: int = 0, **overrides) -> AuditRecord:
    values = {
        "subject": "therapist-1",
        "clinic": "clinic-a",
        "client_ref": client_ref("clinic-a", f"c-{i:06d}", KEY_A),
        "action": "risk.read",
        "outcome": "ok",
        "status": 200,
        "request_id": f"req-{i}",
        "model_version": "3",
    }
    return AuditRecord(**(values | overrides))


def _writer(
    path: Path, name: str, n: int, policy: str = "interval", barrier: Path | None = None
) -> subprocess.Popen:
    """A process appending ``n`` records (forever if negative); with ``barrier``, it writes
    ``barrier/ready-<name>`` once set up and starts writing when ``barrier/go`` exists."""
    extra = [] if barrier is None else [str(barrier)]
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), name, str(n), policy, *extra],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )


@contextlib.contextmanager
def _captured(name: str) -> Iterator[list[logging.LogRecord]]:
    """Records of one logger, whatever the service's log set-up did to propagation."""
    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield logged
    finally:
        logger.removeHandler(handler)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


# -- records ----------------------------------------------------------------------------------


def test_record_round_trips_through_one_json_line():
    record = _record(5)
    line = record.to_json()
    assert "\n" not in line
    doc = json.loads(line)
    assert list(doc) == [
        "time", "subject", "clinic", "client_ref", "action", "outcome", "status",
        "request_id", "model_version",
    ]  # fmt: skip
    assert AuditRecord.from_json(line) == record


def test_time_defaults_to_now_in_utc_with_milliseconds():
    before = datetime.now(UTC) - timedelta(seconds=1)
    stamp = _record().time
    assert stamp.endswith("Z") and len(stamp) == len("2026-01-01T00:00:00.000Z")
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before <= parsed <= datetime.now(UTC)


def test_utc_timestamp_converts_other_zones_and_refuses_naive_times():
    moment = datetime(2026, 9, 1, 14, 30, 5, 123_999, tzinfo=timezone(timedelta(hours=2)))
    assert utc_timestamp(moment) == "2026-09-01T12:30:05.123Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        utc_timestamp(datetime(2026, 9, 1))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"time": "2026-09-01 12:00:00"}, "time must be UTC ISO 8601"),
        ({"time": "2026-09-01T12:00:00.000Z\n"}, "time must be UTC ISO 8601"),  # $ would pass it
        ({"time": "٢٠٢٦-09-01T12:00:00.000Z"}, "time must be UTC ISO 8601"),  # \d would pass it
        ({"action": "risk.read\n"}, "action must look like 'area.verb'"),
        ({"client_ref": "a" * 64 + "\n"}, "client_ref must be a client_ref"),
        ({"action": "read risk"}, "action must look like 'area.verb'"),
        ({"outcome": "maybe"}, "outcome is not one of"),
        ({"outcome": ["ok"]}, "outcome is not one of"),
        ({"status": 99}, "status must be an HTTP status code"),
        ({"status": True}, "status must be an HTTP status code"),
        ({"status": "200"}, "status must be an HTTP status code"),
        ({"client_ref": "c-000123"}, "client_ref must be a client_ref"),
        ({"subject": "x" * 257}, "subject must be text"),
        ({"clinic": "clinic\na"}, "clinic must be text"),
        ({"request_id": None}, "request_id must be text"),
        ({"subject": "lone \ud800 surrogate"}, "subject must be text"),  # not UTF-8
        ({"clinic": "clinic\x85a"}, "clinic must be text"),  # C1 control (NEL)
        ({"subject": "line\u2028break"}, "subject must be text"),
        # A caller's X-Request-ID only ever as its keyed pseudonym, never the value itself.
        ({"correlation_ref": "c-000123"}, "correlation_ref must be a correlation_ref"),
        ({"correlation_ref": "a" * 64 + "\n"}, "correlation_ref must be a correlation_ref"),
        ({"correlation_ref": 7}, "correlation_ref must be a correlation_ref"),
    ],
)
def test_invalid_records_are_refused_without_echoing_the_value(overrides, message):
    with pytest.raises(AuditRecordError, match=message) as info:
        _record(**overrides)
    for value in overrides.values():
        if isinstance(value, str) and len(value) > 3:
            assert value not in str(info.value)


def test_records_without_client_or_identity_are_valid():
    # A refused (401) request and a model endpoint: no subject, clinic or client.
    record = AuditRecord(
        action="model.reload", outcome="denied", status=401, request_id="r1"
    )  # fmt: skip
    assert record.subject is None and record.client_ref is None and record.model_version is None
    assert AuditRecord.from_json(record.to_json()) == record


@pytest.mark.parametrize(
    "line",
    [
        b'{"time": "2026-09-01T12:00:00.000Z", "subj',
        b"[]",
        b'{"time": "2026-09-01T12:00:00.000Z"}',
        b"\xff\xfe",
        # A whole record plus a field AuditRecord does not have.
        b'{"time":"2026-09-01T12:00:00.000Z","subject":null,"clinic":null,"client_ref":null,'
        b'"action":"model.read","outcome":"ok","status":200,"request_id":"r","model_version":null,'
        b'"correlation_ref":null,"extra":1}',
    ],
)
def test_from_json_refuses_torn_or_foreign_lines(line):
    with pytest.raises(AuditRecordError, match="not"):
        AuditRecord.from_json(line)


# -- pseudonyms -------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(client_id=st.text(min_size=1, max_size=40))
def test_client_ref_is_stable_per_key_and_differs_across_keys(client_id):
    ref = client_ref("clinic-a", client_id, KEY_A)
    assert (
        ref
        == client_ref("clinic-a", client_id, KEY_A)
        == ClientRefs(KEY_A).client_ref("clinic-a", client_id)
    )
    assert len(ref) == 64 and set(ref) <= set("0123456789abcdef")
    assert ref != client_ref("clinic-a", client_id, KEY_B)
    assert client_id not in ref or len(client_id) < 4
    assert ref != client_ref("clinic-a", client_id + "x", KEY_A)


def test_client_refs_never_show_the_key_and_refuse_short_keys():
    assert KEY_A.hex() not in repr(ClientRefs(KEY_A)) and str(KEY_A) not in repr(ClientRefs(KEY_A))
    with pytest.raises(Exception, match="too short"):
        ClientRefs(b"short")
    with pytest.raises(Exception, match="too short"):
        client_ref("clinic-a", "c-1", b"short")


def test_key_file_is_created_once_with_mode_0600(tmp_path):
    path = tmp_path / "keys" / "audit.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key  # read back, not regenerated
    assert [p.name for p in path.parent.iterdir()] == ["audit.key"]  # no temporary left behind
    other = load_or_create_key(tmp_path / "other.key")
    assert other != key


def test_concurrent_first_use_agrees_on_one_key(tmp_path):
    path = tmp_path / "audit.key"
    keys: list[bytes] = []
    barrier = threading.Barrier(8)

    def load() -> None:
        barrier.wait()
        keys.append(load_or_create_key(path))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.key"]


def test_key_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "audit.key"
    load_or_create_key(path)
    path.chmod(0o644)
    with pytest.raises(Exception, match="chmod 600"):
        load_or_create_key(path)


def test_settings_key_wins_over_key_file_and_must_be_hex(tmp_path, monkeypatch):
    monkeypatch.setenv("ALLIANCE_RISK_AUDIT_KEY", KEY_B.hex())
    monkeypatch.setenv("ALLIANCE_RISK_AUDIT_KEY_FILE", str(tmp_path / "unused.key"))
    settings_ = AuditSettings()
    assert settings_.load_key() == KEY_B
    assert KEY_B.hex() not in repr(settings_)
    assert not (tmp_path / "unused.key").exists()
    monkeypatch.setenv("ALLIANCE_RISK_AUDIT_KEY", "not hex at all")
    with pytest.raises(Exception, match="hex digits"):
        AuditSettings().load_key()


def test_settings_defaults_live_under_the_project_root(monkeypatch):
    for name in ("PATH", "KEY", "KEY_FILE", "FSYNC"):
        monkeypatch.delenv(f"ALLIANCE_RISK_AUDIT_{name}", raising=False)
    monkeypatch.chdir(ROOT / "service")
    settings_ = AuditSettings()
    assert settings_.path == ROOT / ".alliance-risk" / "audit.jsonl"
    assert settings_.key_file == ROOT / ".alliance-risk" / "audit.key"
    assert settings_.fsync == "interval"  # see AuditSettings.fsync: a kill loses nothing


def test_settings_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ALLIANCE_RISK_AUDIT_PATH", str(tmp_path / "a.jsonl"))
    monkeypatch.setenv("ALLIANCE_RISK_AUDIT_FSYNC", "interval")
    monkeypatch.setenv("ALLIANCE_RISK_AUDIT_FSYNC_INTERVAL_S", "0.5")
    settings_ = AuditSettings()
    with settings_.open_log() as log:
        assert (log.path, log.fsync, log.fsync_interval_s) == (
            tmp_path / "a.jsonl",
            "interval",
            0.5,
        )
    monkeypatch.setenv("ALLIANCE_RISK_AUDIT_FSYNC", "never")
    with pytest.raises(ValueError, match="fsync"):
        AuditSettings()


# -- the file ---------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["always", "interval"])
def test_log_appends_one_line_per_record_and_reads_back(tmp_path, policy):
    path = tmp_path / "audit" / "audit.jsonl"
    with JsonLinesAuditLog(path, fsync=policy, fsync_interval_s=0.05) as log:
        assert isinstance(log, AuditLog)
        for i in range(5):
            log.write(_record(i))
    with JsonLinesAuditLog(path, fsync=policy) as log:  # reopening appends, never truncates
        log.write(_record(5))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().count(b"\n") == 6
    got = list(records(path))
    assert [r.request_id for r in got] == [f"req-{i}" for i in range(6)]
    assert got[3] == dataclasses.replace(_record(3), time=got[3].time)


def test_interval_policy_syncs_in_the_background(tmp_path, monkeypatch):
    synced = threading.Event()
    import service.audit_log as audit

    real = audit._fdatasync
    monkeypatch.setattr(audit, "_fdatasync", lambda fd: (real(fd), synced.set()))
    log = JsonLinesAuditLog(tmp_path / "a.jsonl", fsync="interval", fsync_interval_s=0.02)
    try:
        log.write(_record())
        assert synced.wait(2.0), "the background thread never synced the written record"
    finally:
        log.close()


def test_no_raw_client_id_reaches_the_file(tmp_path):
    ids = [f"c-{i:06d}" for i in range(50)] + ["Ünïcode-client", "client with spaces"]
    refs = ClientRefs(KEY_A)
    path = tmp_path / "audit.jsonl"
    with JsonLinesAuditLog(path) as log:
        for i, client_id in enumerate(ids):
            log.write(_record(i, client_ref=refs.client_ref("clinic-a", client_id)))
    text = path.read_text(encoding="utf-8")
    for client_id in ids:
        assert client_id not in text
        assert json.dumps(client_id)[1:-1] not in text  # nor its JSON-escaped form
    # ... while an auditor with the key finds every access to one client.
    wanted = refs.client_ref("clinic-a", "c-000007")
    assert [r.request_id for r in records(path) if r.client_ref == wanted] == ["req-7"]


def test_closed_log_refuses_writes(tmp_path):
    log = JsonLinesAuditLog(tmp_path / "a.jsonl")
    log.close()
    log.close()
    with pytest.raises(AuditWriteError, match="closed"):
        log.write(_record())


def test_write_errors_are_audit_write_errors(tmp_path, monkeypatch):
    import service.audit_log as audit

    log = JsonLinesAuditLog(tmp_path / "a.jsonl")

    def no_space(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit.os, "write", no_space)
    with pytest.raises(AuditWriteError, match="No space left"):
        log.write(_record())
    monkeypatch.undo()
    log.close()


def test_short_write_fragment_is_ended_before_the_next_record(tmp_path, monkeypatch):
    import service.audit_log as audit

    path = tmp_path / "a.jsonl"
    log = JsonLinesAuditLog(path)
    log.write(_record(0))
    real_write = os.write
    monkeypatch.setattr(audit.os, "write", lambda fd, data: real_write(fd, data[:40]))
    with pytest.raises(AuditWriteError, match="partly written"):
        log.write(_record(1))
    monkeypatch.undo()
    log.write(_record(2))
    log.close()
    with pytest.raises(AuditRecordError, match="line 2: not a complete JSON record"):
        list(records(path))
    assert [r.request_id for r in records(path, skip_invalid=True)] == ["req-0", "req-2"]


def test_torn_last_line_from_a_crash_is_ended_on_reopen(tmp_path):
    path = tmp_path / "a.jsonl"
    whole = _record(0).to_json() + "\n"
    torn = _record(1).to_json()[:57]
    path.write_text(whole + torn)
    with JsonLinesAuditLog(path) as log:
        log.write(_record(2))
    lines = _lines(path)
    assert lines[0].decode() + "\n" == whole and lines[1].decode() == torn
    assert AuditRecord.from_json(lines[2]).request_id == "req-2"
    with _captured("service.audit_log") as logged:
        assert [r.request_id for r in records(path, skip_invalid=True)] == ["req-0", "req-2"]
    assert [r.__dict__.get("fields") for r in logged] == [
        {"line": 2, "reason": "not a complete JSON record"}
    ]
    assert all(torn[20:] not in r.getMessage() for r in logged)


def test_record_glued_to_a_fragment_by_another_process_is_recovered(tmp_path):
    # Process B had the file open when process A was killed mid-write: B's next record
    # follows A's fragment on the same line.
    path = tmp_path / "a.jsonl"
    torn = _record(1).to_json()[:120]
    path.write_text(_record(0).to_json() + "\n" + torn + _record(2).to_json() + "\n")
    with pytest.raises(AuditRecordError, match="line 2"):
        list(records(path))
    assert [r.request_id for r in records(path, skip_invalid=True)] == ["req-0", "req-2"]


def test_threads_sharing_a_log_and_separate_logs_write_only_whole_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    shared = JsonLinesAuditLog(path, fsync="interval", fsync_interval_s=0.05)
    own = [JsonLinesAuditLog(path, fsync="interval", fsync_interval_s=0.05) for _ in range(2)]
    logs = [shared] * 4 + own
    barrier = threading.Barrier(len(logs))

    def write(t: int, log: JsonLinesAuditLog) -> None:
        barrier.wait()
        for i in range(300):
            # Long subjects make each write span more bytes, so interleaving would show.
            log.write(_record(i, request_id=f"t{t}-{i}", subject=f"s{t}" + "x" * 200))

    threads = [threading.Thread(target=write, args=(t, log)) for t, log in enumerate(logs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for log in {id(log): log for log in logs}.values():
        log.close()
    got = [r.request_id for r in records(path)]
    assert len(got) == len(set(got)) == 6 * 300
    assert Counter(rid.split("-")[0] for rid in got) == {f"t{t}": 300 for t in range(6)}
    # Each writer's records keep their order.
    for t in range(6):
        mine = [int(rid.split("-")[1]) for rid in got if rid.startswith(f"t{t}-")]
        assert mine == sorted(mine)


def test_two_processes_appending_write_only_whole_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    # Both start writing at once: without the barrier, one interpreter's start-up can outlast
    # the other's 3,000 writes on a loaded machine (seen in CI), and nothing overlaps.
    writers = [_writer(path, name, 3000, barrier=tmp_path) for name in ("p1", "p2")]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{n}").exists() for n in ("p1", "p2")):
        assert time.monotonic() < deadline and all(w.poll() is None for w in writers)
        time.sleep(0.01)
    (tmp_path / "go").touch()
    for writer in writers:
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err.decode()[-2000:]
    assert path.read_bytes().endswith(b"\n")
    got = [r.request_id for r in records(path)]
    assert len(got) == 6000
    assert Counter(rid.split("-")[0] for rid in got) == {"p1": 3000, "p2": 3000}
    # They did run at the same time (the lines are interleaved, whole).
    first_p2 = next(i for i, rid in enumerate(got) if rid.startswith("p2"))
    last_p1 = max(i for i, rid in enumerate(got) if rid.startswith("p1"))
    assert first_p2 < last_p1


def test_sigkill_mid_writing_leaves_every_completed_line_whole(tmp_path):
    path = tmp_path / "a.jsonl"
    writer = _writer(path, "victim", -1)
    try:
        deadline = time.monotonic() + 30
        while (not path.exists() or path.stat().st_size < 200_000) and time.monotonic() < deadline:
            assert writer.poll() is None, writer.stderr.read().decode()[-2000:]
            time.sleep(0.01)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=10)
    assert writer.returncode == -signal.SIGKILL
    *complete, tail = _lines(path)
    assert len(complete) > 500
    numbers = [int(AuditRecord.from_json(line).request_id.split("-")[1]) for line in complete]
    assert numbers == list(range(len(complete)))  # nothing lost or damaged before the kill
    # At most the line being written is lost; reopening keeps the next record whole.
    with JsonLinesAuditLog(path) as log:
        log.write(_record(0, request_id="after-restart"))
    got = [r.request_id for r in records(path, skip_invalid=True)]
    assert len(got) == len(complete) + 1 and got[-1] == "after-restart"
    if not tail:  # killed between two writes: the file reads strictly
        assert len(list(records(path))) == len(got)


def _count_writes(monkeypatch) -> list[int]:
    """Sizes of the audit module's ``os.write`` calls from now on (until monkeypatch.undo)."""
    import service.audit_log as audit

    calls: list[int] = []
    real_write = os.write

    def counting(fd, data):
        calls.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(audit.os, "write", counting)
    return calls


def test_write_batch_appends_one_request_s_records_whole_and_in_order(tmp_path, monkeypatch):
    path = tmp_path / "a.jsonl"
    template = _record(7, action="risk.batch")
    refs = [client_ref("clinic-a", f"c-{i}", KEY_A) for i in range(1000)]
    log = JsonLinesAuditLog(path)
    log.write(_record(0))
    calls = _count_writes(monkeypatch)
    log.write_batch(template, [(r, 200, "ok") for r in refs])
    log.write_batch(template, [])  # nothing to write, no system call
    monkeypatch.undo()
    log.write(_record(1001))
    log.close()
    assert len(calls) == 1  # one system call for the whole batch
    got = list(records(path))
    assert [r.request_id for r in got] == ["req-0"] + ["req-7"] * 1000 + ["req-1001"]
    assert [r.client_ref for r in got[1:-1]] == refs
    assert {r.action for r in got[1:-1]} == {"risk.batch"}


def test_write_batch_after_a_torn_line_starts_on_a_line_of_its_own(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(_record(0).to_json() + "\n" + _record(1).to_json()[:50])
    refs = [client_ref("clinic-a", "c-2", KEY_A), client_ref("clinic-a", "c-3", KEY_A)]
    with JsonLinesAuditLog(path) as log:
        log.write_batch(_record(2), [(r, 200, "ok") for r in refs])
    got = list(records(path, skip_invalid=True))
    assert [r.request_id for r in got] == ["req-0", "req-2", "req-2"]
    assert [r.client_ref for r in got[1:]] == refs


@pytest.mark.parametrize(
    "shared",
    [
        {},
        {"subject": None, "clinic": None, "model_version": None},
        {"subject": 'thérapeute-ü \\ "quoted"', "clinic": "clinique-é", "request_id": ""},
        {"correlation_ref": correlation_ref("caller-trace-1", KEY_A)},
    ],
)
def test_batch_lines_equal_the_records_written_one_by_one(shared) -> None:
    template = _record(0, action="risk.batch", **shared)
    clients = [
        (client_ref("clinic-a", f"c-{i}", KEY_A), status, outcome)
        for i, (status, outcome) in enumerate([(200, "ok"), (422, "invalid"), (404, "not_found")])
    ] + [(None, 200, "ok")]
    expected = b"".join(
        dataclasses.replace(template, client_ref=ref, status=status, outcome=outcome).to_line()
        for ref, status, outcome in clients
    )
    assert template.batch_lines(clients) == expected
    assert [AuditRecord.from_json(x) for x in expected.splitlines()][1].status == 422
    assert template.batch_lines([]) == b""


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (("not-a-ref", 200, "ok"), "client_ref must be a client_ref"),
        ((client_ref("clinic-a", "c", KEY_A) + "\n", 200, "ok"), "client_ref must be a client_ref"),
        ((None, 99, "ok"), "status must be an HTTP status code"),
        ((None, True, "ok"), "status must be an HTTP status code"),
        ((None, 200, "fine"), "outcome is not one of"),
    ],
)
def test_batch_lines_check_each_client_like_a_record(item, message) -> None:
    with pytest.raises(AuditRecordError, match=message):
        _record(0).batch_lines([(None, 200, "ok"), item])


def test_records_are_utf8_json_lines_that_round_trip_any_text():
    record = _record(4, subject="thérapeute-ü", clinic="clinique-é")
    line = record.to_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert AuditRecord.from_json(line) == record == AuditRecord.from_json(record.to_json())
