"""Entry point of the ``alliance-risk`` console script."""

from __future__ import annotations

import logging
import os

# MLflow reports usage telemetry to the internet unless told not to; this service handles
# mental-health data and sends nothing anywhere. Set before any module imports mlflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import typer

from service import cli as service_cli
from service import token_cli
from training import cli as training_cli

app = typer.Typer(
    name="alliance-risk",
    help="Dropout risk from therapeutic-alliance trajectories and attendance.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
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

if __name__ == "__main__":
    app()
