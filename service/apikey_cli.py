"""``alliance-risk apikey``: create API keys and list them, for ``ALLIANCE_RISK_AUTH_MODE=api_key``.

``create`` prints the new key once, alone on stdout (``KEY=$(alliance-risk apikey create ...)``
works), and appends only its hash to the keys file; everything else goes to stderr. The file is
rewritten whole through a temporary file (mode 0600) that :func:`load_api_keys` must accept
before it replaces the old one, so the service never sees a half-written or invalid file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service.audit import MAX_TEXT, is_audit_text
from service.auth import SCOPES, SMART_ALIASES, generate_api_key, hash_api_key, load_api_keys

#: The service reads its keys file from here (see service.auth.settings.AuthSettings).
KEYS_FILE_ENV = "ALLIANCE_RISK_AUTH_API_KEYS_FILE"
#: As the analysts' commands: 1 refused (a value the loader rejects), 2 unusable file.
EXIT_REFUSED, EXIT_UNUSABLE = 1, 2
_SCOPE_HELP = ", ".join(sorted(SCOPES) + sorted(SMART_ALIASES))
#: The keys file's limit on a key id (service.auth.api_keys); a clinic is an audit text field.
_MAX_NAME = 128
_PRINTABLE = "printable characters (no control characters or line separators)"

KeysFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--keys-file",
        envvar=KEYS_FILE_ENV,
        help=f"JSON file of hashed keys the service reads (env {KEYS_FILE_ENV}). Created "
        "with mode 0600 if absent.",
        metavar="<file>",  # a folder is refused by the command, in its one-line form
        show_default=False,
    ),
]

apikey_app = typer.Typer(
    name="apikey",
    help="Create and list API keys (service mode ALLIANCE_RISK_AUTH_MODE=api_key).",
    no_args_is_help=True,
)


def _fail(console: Console, message: str, code: int = EXIT_UNUSABLE) -> typer.Exit:
    console.print(f"[bold red]Error[/]: {escape(message)}")
    return typer.Exit(code)


def _keys_file(console: Console, keys_file: Path | None) -> Path:
    if keys_file is None:
        raise _fail(console, f"no keys file: pass --keys-file or set {KEYS_FILE_ENV}")
    return keys_file


def _option_problem(name: str | None, clinic: str, scopes: list[str]) -> str | None:
    """What is wrong with the options, naming the option and its rule, else None.

    The checks the keys file's loader makes, made first so that a refusal names the option
    rather than a field of a temporary file. A value with control characters is never shown.
    """
    if name is not None and not (0 < len(name) <= _MAX_NAME and is_audit_text(name)):
        return f"--name must be 1 to {_MAX_NAME} {_PRINTABLE}"
    if not (clinic and is_audit_text(clinic)):
        return f"--clinic must be 1 to {MAX_TEXT} {_PRINTABLE}"
    unknown = sorted(s for s in scopes if s not in SCOPES and s not in SMART_ALIASES)
    if unknown:
        shown = unknown if all(is_audit_text(s) for s in unknown) else "(not shown)"
        return f"--scope: unknown scope(s) {shown}; one of: {_SCOPE_HELP}"
    return None


def _existing_entries(path: Path) -> list[dict[str, Any]]:
    """The entries of a valid keys file as stored (``[]`` if absent); ``ValueError`` if not."""
    if not path.exists():
        return []
    load_api_keys(path)  # every check the service makes at start-up
    return list(json.loads(path.read_bytes())["keys"])


def _write_checked(path: Path, entries: list[dict[str, Any]]) -> None:
    """Replace ``path`` with ``entries`` atomically, mode 0600, after the loader accepts them."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"keys": entries}, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            load_api_keys(Path(tmp))
        except ValueError as exc:  # name the keys file, not the temporary one
            raise ValueError(str(exc).replace(tmp, str(path))) from None
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def create(
    clinic: Annotated[str, typer.Option("--clinic", help="Clinic whose clients the key may read.")],
    scope: Annotated[
        list[str],
        typer.Option("--scope", help=f"Scope to grant; repeat for several. One of: {_SCOPE_HELP}."),
    ],
    keys_file: KeysFileOpt = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Public id of the key, shown in audit records (e.g. frontdesk-north). "
            "Default: key-<8 random hex digits>.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create an API key: print it once on stdout and append its hash to the keys file.

    Only the hash is stored, so the key cannot be shown again: store it now. A running service
    reads the keys file at start-up; restart it for the new key to work.
    """
    console = Console(stderr=True)
    path = _keys_file(console, keys_file)
    problem = _option_problem(name, clinic, scope)
    if problem is not None:
        raise _fail(console, f"refused, nothing was changed: {problem}", EXIT_REFUSED)
    try:
        entries = _existing_entries(path)
    except (ValueError, OSError) as exc:
        raise _fail(console, f"the keys file cannot be used, nothing was changed: {exc}") from None
    key_id = name if name is not None else f"key-{os.urandom(4).hex()}"
    if any(entry.get("id") == key_id for entry in entries):
        raise _fail(
            console,
            f"{path} already holds a key named {key_id!r}; choose another --name",
            EXIT_REFUSED,
        )
    key = generate_api_key()
    scopes = list(dict.fromkeys(scope))
    entry = {"id": key_id, "hash": hash_api_key(key), "clinic": clinic, "scopes": scopes}
    try:
        _write_checked(path, [*entries, entry])
    except ValueError as exc:
        # The loader names entry and field, never a value; point at the options instead.
        raise _fail(console, f"refused, nothing was changed: {exc}", EXIT_REFUSED) from None
    except OSError as exc:
        raise _fail(console, f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
    console.print(
        f"Created API key {escape(key_id)!r} for clinic {escape(clinic)!r} with scopes "
        f"{escape(' '.join(scopes))}; its hash was added to {escape(str(path))}. "
        "The key is shown once, below: store it now. Restart the service to use it."
    )
    typer.echo(key)


def list_keys(keys_file: KeysFileOpt = None) -> None:
    """List the keys in the keys file: id, clinic and scopes (never the hashes)."""
    console = Console(stderr=True)
    path = _keys_file(console, keys_file)
    if not path.exists():
        raise _fail(console, f"no keys file at {path}")
    try:
        records = load_api_keys(path)
    except (ValueError, OSError) as exc:
        raise _fail(console, f"the keys file cannot be used: {exc}") from None
    table = Table(title=f"{len(records)} API keys in {path}", title_justify="left")
    for column in ("id", "clinic", "scopes"):
        table.add_column(column)
    for record in records:
        table.add_row(
            escape(record.key_id), escape(record.clinic), escape(" ".join(sorted(record.scopes)))
        )
    Console().print(table)


apikey_app.command("create")(create)
apikey_app.command("list")(list_keys)


def register(app: typer.Typer) -> None:
    """Attach the ``apikey`` command group to ``app``."""
    app.add_typer(apikey_app)
