"""Entry point of the ``alliance-risk`` console script."""

from __future__ import annotations

import logging
import os
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

# MLflow reports usage telemetry to the internet unless told not to; this service handles
# mental-health data and sends nothing anywhere. Set before any module imports mlflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption
from typer.models import DefaultPlaceholder

from service import apikey_cli, audit_cli, token_cli
from service import cli as service_cli
from service.store import cli as store_cli
from training import cli as training_cli

PACKAGE = "alliance-risk"


def _without_flag_metavars(params: list[Any]) -> list[Any]:
    """Flags take no value, so their help shows none (typer would print ``<bool>``)."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_bool_flag and param.metavar is None:
            param.metavar = ""
    return params


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_metavars(super().get_params(ctx))


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_metavars(super().get_params(ctx))


app = typer.Typer(
    name=PACKAGE,
    cls=_Group,
    help="Dropout risk from therapeutic-alliance trajectories and attendance.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _version() -> str:
    try:
        return package_version(PACKAGE)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{PACKAGE} {_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the installed version of alliance-risk and exit.",
    ),
    verbose: int = typer.Option(
        0,
        "--verbose",
        "-v",
        count=True,
        help="Log progress detail to stderr (-v: info, -vv: debug). Logs never hold client data.",
    ),
) -> None:
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


training_cli.register(app)
service_cli.register(app)
token_cli.register(app)
apikey_cli.register(app)
audit_cli.register(app)
store_cli.register(app)


def _use_our_classes(typer_app: typer.Typer) -> None:
    for command in typer_app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = _Command
    for group in typer_app.registered_groups:
        if isinstance(group.cls, DefaultPlaceholder) or group.cls in (None, TyperGroup):
            group.cls = _Group
        if group.typer_instance is not None:
            _use_our_classes(group.typer_instance)


_use_our_classes(app)

if __name__ == "__main__":
    app()
