"""The analysts' command group: simulate, validate, train, evaluate, score, promote, monitor."""

from __future__ import annotations

import typer

from training.commands import evaluate, monitor, promote, score, simulate, train, validate


def register(app: typer.Typer) -> None:
    """Attach every training-side command to ``app``."""
    for module in (simulate, validate, train, evaluate, score, promote, monitor):
        module.register(app)
