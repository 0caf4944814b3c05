"""Reading the ``sessions`` and ``clients`` files at the edge: read, validate, quarantine, normalise.

Files are read as they are (CSV cells as text, so ids such as ``007`` survive), checked with
:func:`features.validation.validate_tables`, and only then handed inward in contract types.
Logs carry counts and file names only, never a cell value.

Row numbers shown to people are 1-based data rows; for CSV files also the file line
(``row + 1``: the header is line 1), which assumes one line per record (no blank lines or
quoted line breaks before it).
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import numpy as np
import pandas as pd
from pyarrow import ArrowException

from features import contract as c
from features.profiles import InstrumentProfile, get_profile
from features.validation import (
    CheckedTables,
    Problem,
    ValidationReport,
    validate_and_normalise,
)

logger = logging.getLogger(__name__)

Files = Mapping[str, str | Path]
OnError = Literal["fail", "quarantine"]

CSV_SUFFIXES: Final = (".csv", ".csv.gz")
PARQUET_SUFFIXES: Final = (".parquet", ".pq")
#: ``_reasons`` text of a row quarantined only because another row of its episode has an error.
EPISODE_QUARANTINED: Final = "quarantined with its episode: another row of this client has an error"
#: Problems listed in ``str(ContractError)`` before "... and N more".
MESSAGE_LIMIT: Final = 20


def _kind(path: str | Path) -> Literal["csv", "parquet"] | None:
    name = Path(path).name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


_SAFE_PARSER_MESSAGE: Final = re.compile(
    r"Expected \d+ fields in line \d+, saw \d+|EOF inside string starting at row \d+"
)
_CSV_OPTIONS: Final = {
    "dtype": "str",
    "keep_default_na": False,
    "na_values": [""],
    "encoding": "utf-8-sig",
}


def _read_csv(path: Path) -> pd.DataFrame:
    """Arrow's multi-threaded reader (2-4x faster, measured); the C parser if Arrow refuses."""
    try:
        return pd.read_csv(path, engine="pyarrow", **_CSV_OPTIONS)  # type: ignore[call-overload]
    except pd.errors.ParserError:
        # Arrow's error quotes the offending row; the C parser may read the file, or else
        # fail with a message that names only line and field counts.
        return pd.read_csv(path, engine="c", **_CSV_OPTIONS)  # type: ignore[call-overload]


#: zlib's own reason in "Error -3 while decompressing data: <reason>" (library text, never data).
_ZLIB_REASON: Final = re.compile(r"while decompressing data: ([a-z ]+)$")


def _gzip_reason(err: Exception) -> str:
    """Why a gzip stream cannot be read, in words that quote none of the file's bytes."""
    if isinstance(err, EOFError):
        return "truncated gzip file (it ends before the compressed data does)"
    found = _ZLIB_REASON.search(str(err)) if isinstance(err, zlib.error) else None
    detail = f" ({found.group(1)})" if found else ""
    return f"corrupt gzip data{detail}; the file is damaged, export or copy it again"


def parquet_parts(path: Path) -> list[Path]:
    """The Parquet files of a dataset folder (as dask or pyarrow write it, hive folders
    included), sorted; empty if the folder holds none. Hidden and ``_``-prefixed files
    (``_metadata``, ``_SUCCESS``) are not data parts."""
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.name.lower().endswith(PARQUET_SUFFIXES)
        and not any(part.startswith(("_", ".")) for part in p.relative_to(path).parts)
    )


def check_parquet_source(path: str | Path) -> Path:
    """``path`` if it is a Parquet file or a Parquet dataset folder; else a clear error.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``path`` is a folder without Parquet files, or a file that is not ``.parquet``/``.pq``.
    """
    path = Path(path)
    if path.is_dir():
        if not parquet_parts(path):
            raise ValueError(
                f"{path.name}: is a folder with no Parquet files (*.parquet, *.pq); give the "
                "table's file or a Parquet dataset folder"
            )
        return path
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if _kind(path) != "parquet":
        raise ValueError(
            f"{path.name}: the Dask engine reads Parquet only (a .parquet file or a dataset "
            "folder of them); convert CSV first, e.g. with pandas' to_parquet"
        )
    return path


def _first_bad_utf8(path: Path) -> tuple[int, int] | None:
    """(line, byte column), both 1-based, of the first byte that is not UTF-8, or None.

    Per line is exact: a UTF-8 sequence never holds a newline byte, so none spans two lines.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    return number, err.start + 1
    except (OSError, EOFError, zlib.error):
        return None
    return None


def read_table(path: str | Path) -> pd.DataFrame:
    """Read one table from CSV (``.csv``, ``.csv.gz``), Parquet (``.parquet``, ``.pq``), or a
    Parquet dataset folder (the ``*.parquet``/``*.pq`` files under it, as dask or pyarrow
    write them, read as one table).

    CSV cells are read as text ("str" dtype) exactly as written: only an empty cell is missing
    (``NA``, ``null`` and the like are kept as text), so ids such as ``007`` survive and the
    validator sees what the file says. A UTF-8 byte-order mark is ignored. Parquet columns keep
    their stored types.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``path`` is a folder with no Parquet file, the extension is not one of the above,
        or the file cannot be parsed: the message names the file and the reason (a corrupt or truncated gzip stream; the line and byte of
        the first byte that is not UTF-8), never a cell's content.
    """
    path = Path(path)
    kind = "parquet" if path.is_dir() else _kind(path)
    if path.is_dir():
        check_parquet_source(path)
    elif kind is None:
        raise ValueError(
            f"{path.name}: unsupported file type; use one of "
            f"{', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}"
        )
    elif not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        frame = _read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except pd.errors.ParserError as err:
        # Only the C parser's line/field counts are passed on: parser messages can quote text.
        found = _SAFE_PARSER_MESSAGE.search(str(err))
        detail = found.group(0) if found else type(err).__name__
        raise ValueError(f"{path.name}: cannot be read as {kind} ({detail})") from None
    except UnicodeDecodeError:
        where = _first_bad_utf8(path)
        at = f" at line {where[0]}, byte {where[1]} of the line" if where else ""
        raise ValueError(
            f"{path.name}: not UTF-8 text{at} (mixed encodings?); save it as UTF-8 CSV"
        ) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        # EOFError would otherwise reach click, which prints only "Aborted.".
        raise ValueError(f"{path.name}: {_gzip_reason(err)}") from None
    except (pd.errors.EmptyDataError, OSError, ArrowException) as err:
        raise ValueError(f"{path.name}: cannot be read as {kind} ({type(err).__name__})") from None
    logger.info("read %s: %d rows, %d columns", path.name, len(frame), frame.shape[1])
    return frame


# ---------------------------------------------------------------------------------------------
# Showing problems to people
# ---------------------------------------------------------------------------------------------


def _file_name(table: str, files: Files | None) -> str:
    if files and table in files:
        return Path(files[table]).name
    return table


def _line(problem: Problem, files: Files | None) -> int | None:
    """File line of the problem's row (CSV only: header is line 1), else None."""
    if problem.row is None or not files or problem.table not in files:
        return None
    return problem.row + 2 if _kind(files[problem.table]) == "csv" else None


def format_problem(problem: Problem, files: Files | None = None) -> str:
    """One readable line, e.g. ``sessions.csv row 12 (line 13), column attendance: <reason>``.

    ``files`` maps table name (``sessions``, ``clients``) to its path; rows are shown 1-based,
    with the file line for CSV. Warnings are prefixed ``warning:``.
    """
    text = _file_name(problem.table, files)
    if problem.row is not None:
        text += f" row {problem.row + 1}"
        line = _line(problem, files)
        if line is not None:
            text += f" (line {line})"
    if problem.column is not None:
        text += f"{',' if problem.row is not None else ''} column {problem.column}"
    text += f": {problem.reason}"
    return f"warning: {text}" if problem.severity == "warning" else text


def problems_frame(report: ValidationReport, files: Files | None = None) -> pd.DataFrame:
    """Every problem as a table for people: ``table``, ``row`` (1-based data row), ``line``
    (CSV file line), ``column``, ``severity``, ``reason``; ``row``/``line`` are Int64, missing
    for table-level problems (and ``line`` for Parquet)."""
    frame = report.to_frame()
    rows = frame["row"] + 1
    csv_tables = [t for t, path in (files or {}).items() if _kind(path) == "csv"]
    lines = (rows + 1).where(frame["table"].isin(csv_tables))
    return pd.DataFrame(
        {
            "table": frame["table"],
            "row": rows,
            "line": lines.astype("Int64"),
            "column": frame["column"],
            "severity": frame["severity"],
            "reason": frame["reason"],
        }
    )


def write_problem_report(
    report: ValidationReport, path: str | Path, files: Files | None = None
) -> Path:
    """Write every problem as CSV (``table,row,line,column,severity,reason``); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    problems_frame(report, files).to_csv(path, index=False)
    logger.info("wrote %d problems to %s", len(report.problems), path)
    return path


class OutputError(OSError):
    """An output (quarantine files) could not be written; the input itself was readable."""


def quarantine_folder(sessions_path: str | Path, quarantine_dir: str | Path | None) -> Path:
    """Where quarantine CSVs go: ``quarantine_dir``, else ``quarantine/`` beside the sessions."""
    return Path(quarantine_dir) if quarantine_dir else Path(sessions_path).parent / "quarantine"


class ContractError(ValueError):
    """The files break the data contract. ``str()`` is a readable report of the first problems.

    Attributes
    ----------
    report
        The full :class:`~features.validation.ValidationReport`.
    files
        Table name -> path, as given to :func:`load_cohort`.
    """

    def __init__(
        self, report: ValidationReport, files: Files | None = None, limit: int = MESSAGE_LIMIT
    ) -> None:
        self.report = report
        self.files = dict(files or {})
        errors, warnings = report.errors, report.warnings
        shown = (errors + warnings)[:limit]
        names = " and ".join(_file_name(t, files) for t in ("sessions", "clients"))
        lines = [f"{names} break the data contract: {len(errors)} errors, {len(warnings)} warnings"]
        lines += [f"  {format_problem(p, files)}" for p in shown]
        rest = len(errors) + len(warnings) - len(shown)
        if rest:
            lines.append(f"  ... and {rest} more (write them all with --report FILE)")
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Loading a cohort
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LoadedCohort:
    """Validated, normalised tables plus what was set aside.

    Attributes
    ----------
    sessions, clients
        The clean rows in contract types (see :func:`features.validation.normalise_sessions`;
        ``session_number`` is int64), with a fresh RangeIndex.
    profile
        The instrument profile the ratings follow.
    report
        Every problem found in the files as read (before quarantine).
    files
        ``{"sessions": path, "clients": path}``.
    sessions_read, clients_read
        Data rows read from each file.
    sessions_quarantined, clients_quarantined
        Rows set aside; ``read == kept + quarantined`` for both tables.
    quarantine_files
        ``{"sessions": path, "clients": path}`` of the quarantine CSVs; empty unless
        ``on_error="quarantine"``.
    """

    sessions: pd.DataFrame
    clients: pd.DataFrame
    profile: InstrumentProfile
    report: ValidationReport
    files: dict[str, Path]
    sessions_read: int
    clients_read: int
    sessions_quarantined: int = 0
    clients_quarantined: int = 0
    quarantine_files: dict[str, Path] = field(default_factory=dict)


def _reasons_by_row(report: ValidationReport, table: str, rows: np.ndarray) -> list[str]:
    """``_reasons`` text for each of ``rows``: its own errors, else the episode note."""
    own: dict[int, list[str]] = {}
    for p in report.problems:
        if p.table == table and p.row is not None and p.severity == "error":
            own.setdefault(p.row, []).append(f"{p.column}: {p.reason}" if p.column else p.reason)
    return ["; ".join(own[r]) if r in own else EPISODE_QUARANTINED for r in rows.tolist()]


def _write_quarantine(raw: pd.DataFrame, rows: np.ndarray, reasons: list[str], path: Path) -> None:
    """Rows exactly as read, plus ``_row`` (1-based data row) and ``_reasons``."""
    out = raw.iloc[rows].assign(_row=rows + 1, _reasons=reasons)
    out.to_csv(path, index=False)


def load_cohort(
    sessions_path: str | Path,
    clients_path: str | Path,
    *,
    profile: str | None = None,
    on_error: OnError = "fail",
    quarantine_dir: str | Path | None = None,
) -> LoadedCohort:
    """Read, validate and normalise a cohort's two tables.

    Parameters
    ----------
    sessions_path, clients_path
        CSV or Parquet files (see :func:`read_table`).
    profile
        Instrument profile name (``alliance6``, ``srs``, ``wai_sr``); ``None`` infers it from
        the ``alliance_*`` columns.
    on_error
        ``"fail"``: raise :class:`ContractError` on any error. ``"quarantine"``: set aside every
        client episode with an error in any of its rows (the client row and all its session
        rows, since a partial history gives wrong features), and session rows whose client is
        unknown or whose client_id is empty, then continue with the clean rest.
    quarantine_dir
        Where ``sessions.quarantine.csv`` and ``clients.quarantine.csv`` go (default:
        ``quarantine/`` next to the sessions file). Written only in quarantine mode.

    Raises
    ------
    ContractError
        On errors in ``"fail"`` mode, and in either mode on a table-level error (a missing
        column or unknown profile), which no row-level quarantine can fix.
    OutputError
        When the quarantine files cannot be written (unreadable input raises ``ValueError``
        or ``FileNotFoundError``).
    """
    files = {"sessions": Path(sessions_path), "clients": Path(clients_path)}
    raw_sessions = read_table(files["sessions"])
    raw_clients = read_table(files["clients"])
    chosen = get_profile(profile) if profile is not None else None
    checked = validate_and_normalise(raw_sessions, raw_clients, chosen)
    report = checked.report
    logger.info(
        "validated %d session rows and %d client rows: %d errors, %d warnings",
        len(raw_sessions),
        len(raw_clients),
        len(report.errors),
        len(report.warnings),
    )
    if report.profile is None or report.table_errors or (on_error == "fail" and not report.ok):
        raise ContractError(report, files)
    if on_error == "fail":
        return LoadedCohort(
            sessions=_clean(checked.sessions, np.ones(len(raw_sessions), dtype=bool)),
            clients=_clean(checked.clients, np.ones(len(raw_clients), dtype=bool)),
            profile=report.profile,
            report=report,
            files=files,
            sessions_read=len(raw_sessions),
            clients_read=len(raw_clients),
        )
    return _quarantine(raw_sessions, raw_clients, checked, report.profile, files, quarantine_dir)


def _clean(normalised: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """Kept rows with a fresh index; ``session_number`` as int64 once only valid rows remain."""
    frame = normalised.loc[keep].reset_index(drop=True)
    if c.SESSION_NUMBER in frame.columns:
        frame = frame.astype({c.SESSION_NUMBER: np.int64})
    return frame


def _quarantine(
    raw_sessions: pd.DataFrame,
    raw_clients: pd.DataFrame,
    checked: CheckedTables,
    profile: InstrumentProfile,
    files: dict[str, Path],
    quarantine_dir: str | Path | None,
) -> LoadedCohort:
    report, sessions, clients = checked.report, checked.sessions, checked.clients
    # One id vocabulary over both tables (integer codes; -1 = empty id), so that taking whole
    # episodes out is array indexing rather than string set membership.
    codes, uniques = pd.factorize(
        pd.concat([sessions[c.CLIENT_ID], clients[c.CLIENT_ID]], ignore_index=True)
    )
    s_code, c_code = codes[: len(sessions)], codes[len(sessions) :]
    bad_code = np.zeros(len(uniques) + 1, dtype=bool)  # last slot absorbs -1
    bad_code[s_code[report.bad_session_rows]] = True
    bad_code[c_code[report.bad_client_rows]] = True
    bad_code[-1] = False
    s_out = bad_code[s_code]
    s_out[report.bad_session_rows] = True
    c_out = bad_code[c_code]
    c_out[report.bad_client_rows] = True

    s_rows, c_rows = np.flatnonzero(s_out), np.flatnonzero(c_out)
    out_dir = quarantine_folder(files["sessions"], quarantine_dir)
    quarantine_files = {
        "sessions": out_dir / "sessions.quarantine.csv",
        "clients": out_dir / "clients.quarantine.csv",
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_quarantine(
            raw_sessions,
            s_rows,
            _reasons_by_row(report, "sessions", s_rows),
            quarantine_files["sessions"],
        )
        _write_quarantine(
            raw_clients,
            c_rows,
            _reasons_by_row(report, "clients", c_rows),
            quarantine_files["clients"],
        )
    except OSError as err:
        raise OutputError(
            f"cannot write the quarantine files to {out_dir} ({err.strerror or type(err).__name__})"
        ) from None

    kept_sessions = _clean(sessions, ~s_out)
    kept_clients = _clean(clients, ~c_out)
    # Nothing dropped silently: every row read is either kept or written to quarantine.
    for table, read, kept, out in (
        ("sessions", len(raw_sessions), len(kept_sessions), len(s_rows)),
        ("clients", len(raw_clients), len(kept_clients), len(c_rows)),
    ):
        if kept + out != read:
            raise RuntimeError(f"{table}: {kept} kept + {out} quarantined != {read} read")
    logger.info(
        "quarantined %d session rows and %d client rows; kept %d session rows and %d client rows",
        len(s_rows),
        len(c_rows),
        len(kept_sessions),
        len(kept_clients),
    )
    return LoadedCohort(
        sessions=kept_sessions,
        clients=kept_clients,
        profile=profile,
        report=report,
        files=files,
        sessions_read=len(raw_sessions),
        clients_read=len(raw_clients),
        sessions_quarantined=len(s_rows),
        clients_quarantined=len(c_rows),
        quarantine_files=quarantine_files,
    )
