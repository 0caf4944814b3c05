"""``alliance-risk serve``: bootstrap a model if the registry has none, then run uvicorn."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from service.settings import DEFAULT_MODEL_URI, ServiceSettings

#: The demo model ``serve`` trains when the embedded registry has no champion.
BOOTSTRAP_CLIENTS = 10_000
BOOTSTRAP_SEED = 7
BOOTSTRAP_REASON = "first model of a fresh installation, trained on simulated demo data"


def _has_champion(model_uri: str) -> bool:
    from models.pyfunc import resolve_model

    try:
        resolve_model(model_uri)
    except LookupError:
        return False
    return True


def _run(console: Console, *args: str) -> int:
    """One ``alliance-risk`` command in a child process, its progress shown live.

    Training runs in a child so the serving process never carries its memory."""
    console.print(f"[dim]$ alliance-risk {' '.join(args)}[/]")
    exe = Path(sys.executable).parent / "alliance-risk"
    return subprocess.call([str(exe), *args])


def bootstrap(console: Console, data_dir: Path, n_clients: int = BOOTSTRAP_CLIENTS) -> None:
    """Simulate a cohort, train, register and promote the first ``alliance-risk`` model."""
    console.print(
        "[bold]No champion model in the registry yet.[/] Training a first one on a simulated "
        f"cohort of {n_clients:,} clients (a minute or two, once)."
    )
    sessions, clients = data_dir / "sessions.csv", data_dir / "clients.csv"
    steps = [
        ("simulate", "--clients", str(n_clients), "--seed", str(BOOTSTRAP_SEED),
         "--out", str(data_dir)),
        ("train", "--sessions", str(sessions), "--clients", str(clients), "--promote"),
    ]  # fmt: skip
    if _run(console, *steps[0]) != 0:
        raise typer.Exit(1)
    if _run(console, *steps[1]) != 0:
        # Trained and registered, but the gates refused it (or training failed): a fresh
        # installation has no champion to protect, so promote the demo model with a recorded
        # reason. A training failure shows up here as a promote error.
        console.print("[yellow]The gates refused the demo model; promoting it with a reason.[/]")
        if _run(console, "promote", "--force", "--reason", BOOTSTRAP_REASON) != 0:
            raise typer.Exit(1)


def _curl(host: str, port: int, example: Path, clinic: str, mode: str) -> str:
    """The README's request as a curl line, with the credential auth ``mode`` expects."""
    from service.auth import API_KEY_HEADER

    exe = Path(sys.executable).parent / "alliance-risk"
    if mode == "dev":
        credential = f"Authorization: Bearer $({exe} token --clinic {clinic} --scope risk:read)"
    elif mode == "api_key":
        credential = f"{API_KEY_HEADER}: $YOUR_API_KEY"
    else:
        credential = "Authorization: Bearer $YOUR_TOKEN"
    return (
        f"curl -s -X POST http://{host}:{port}/v1/risk "
        f'-H "{credential}" '
        f"-H 'Content-Type: application/json' -d @{example}"
    )


AUTH_REQUIRED = (
    "Authentication is required and never off. Set ALLIANCE_RISK_AUTH_MODE=jwt (with "
    "ALLIANCE_RISK_AUTH_ISSUERS) or api_key (with ALLIANCE_RISK_AUTH_API_KEYS_FILE), see the "
    "README's Security section; or pass --dev-auth for a local trial with dev tokens."
)


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind. Keep 127.0.0.1 unless a "
                                      "reverse proxy with TLS fronts the service.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    model: Annotated[str, typer.Option("--model", help="Model URI; a models:/<name>@<alias> "
                                       "URI is watched and reloaded when the alias moves.")]
    = DEFAULT_MODEL_URI,
    workers: Annotated[int, typer.Option(min=1, max=16, help="Worker processes (one model "
                                         "copy and one CPU thread each).")] = 1,
    poll_interval: Annotated[float, typer.Option(min=0, help="Seconds between checks of the "
                                                 "model alias; 0 disables polling.")] = 30.0,
    bootstrap_model: Annotated[bool, typer.Option("--bootstrap/--no-bootstrap", help="With "
                               "the default model URI and no champion yet: simulate, train, "
                               "register and promote a demo model first.")] = True,
    bootstrap_clients: Annotated[int, typer.Option(min=500, help="Size of the simulated "
                                 "cohort the demo model is trained on.")] = BOOTSTRAP_CLIENTS,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking/registry URI. "
                            "Default: the embedded SQLite store in .mlflow/.",
                            envvar="MLFLOW_TRACKING_URI")] = None,
    dev_auth: Annotated[bool, typer.Option("--dev-auth", help="Local trial: accept dev tokens "
                        "signed by a key pair generated in .alliance-risk/dev-keys (mint them "
                        "with 'alliance-risk token'). Refused when ALLIANCE_RISK_DEPLOYMENT is "
                        "set. Without it, ALLIANCE_RISK_AUTH_MODE must be jwt or api_key.")]
    = False,
) -> None:  # fmt: skip
    """Serve the risk API (FastAPI on uvicorn) with the champion model."""
    import mlflow
    from pydantic import ValidationError

    from models.store import project_root
    from models.store import tracking_uri as default_uri
    from service.auth import Authenticator, AuthSettings, DevModeRefused
    from service.schemas import RISK_REQUEST_EXAMPLE

    console = Console(stderr=True)
    if dev_auth:
        os.environ["ALLIANCE_RISK_AUTH_MODE"] = "dev"
    try:
        auth = AuthSettings()  # fail fast, before any bootstrap work
    except DevModeRefused as exc:
        console.print(f"[bold red]Refused[/]: {exc}")
        raise typer.Exit(2) from None
    except ValidationError:
        console.print(f"[bold red]Cannot start[/]: {AUTH_REQUIRED}")
        raise typer.Exit(2) from None
    try:
        # What each worker's app builds: a keys file it would refuse stops serve here, with
        # one line naming the file and the reason (load_api_keys never quotes a value).
        Authenticator(auth)
    except (OSError, ValueError) as exc:
        reason = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
        console.print(f"Cannot start: {reason}", style="bold red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    # One OpenMP thread per process: more threads than cores costs ~10x (perf-notes).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    uri = tracking_uri or default_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    root = project_root()
    if bootstrap_model and model == DEFAULT_MODEL_URI and not _has_champion(model):
        bootstrap(console, root / "data" / "demo", bootstrap_clients)
    example = write_example(root / "data" / "demo", RISK_REQUEST_EXAMPLE)
    os.environ.update(
        {
            "MLFLOW_TRACKING_URI": uri,
            "ALLIANCE_RISK_MODEL_URI": model,
            "ALLIANCE_RISK_POLL_INTERVAL_S": str(poll_interval),
        }
    )
    try:
        settings = ServiceSettings()
    except ValidationError as exc:
        console.print(f"[bold red]Cannot start[/]: {exc}", markup=False)
        raise typer.Exit(2) from None
    state_dir = shared_worker_state() if workers > 1 else None
    console.print(
        f"Serving {model} on http://{host}:{port} (docs: http://{host}:{port}/docs). "
        "When /readyz says ready, try:\n"
    )
    clinic = str(RISK_REQUEST_EXAMPLE["clinic_id"])
    console.print(_curl(host, port, example, clinic, auth.mode), soft_wrap=True,
                  highlight=False, markup=False)  # fmt: skip
    try:
        _run_uvicorn(host, port, workers, settings)
    finally:
        if state_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)


def _run_uvicorn(host: str, port: int, workers: int, settings: ServiceSettings) -> None:
    import uvicorn

    from service.connections import DeadlineHttpToolsProtocol

    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        # Header and body read deadlines (service/connections.py); no websockets to upgrade to.
        http=DeadlineHttpToolsProtocol,
        ws="none",
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
        limit_concurrency=settings.max_connections,
        backlog=settings.backlog,
    )


def write_example(folder: Path, example: dict[str, object]) -> Path:
    """The README's request body as a file for the printed curl line.

    Written into ``folder`` (the project's data/demo) when it is writable, else into a fresh
    temporary folder: a non-root user in a container cannot write under the project.
    """
    text = json.dumps(example, indent=2) + "\n"
    path = folder / "request.json"
    try:
        if not (path.is_file() and path.read_text() == text):
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    except OSError:
        path = Path(tempfile.mkdtemp(prefix="alliance-risk-")) / "request.json"
        path.write_text(text)
    return path


def shared_worker_state() -> Path:
    """A fresh folder the workers of one ``serve`` share: Prometheus' multiprocess files and
    the rate limiter's buckets (``PROMETHEUS_MULTIPROC_DIR``, ``ALLIANCE_RISK_LIMIT_SHARED_DIR``),
    set before the workers start."""
    folder = Path(tempfile.mkdtemp(prefix="alliance-risk-workers-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    os.environ["ALLIANCE_RISK_LIMIT_SHARED_DIR"] = str(folder)
    return folder


def register(app: typer.Typer) -> None:
    """Attach ``serve`` to ``app``."""
    app.command("serve")(serve)
