"""The analysts' command group: simulate, validate, train, evaluate, score, promote."""

from __future__ import annotations

import typer

from training.commands import evaluate, promote, score, simulate, train, validate


def register(app: typer.Typer) -> None:
    """Attach every training-side command to ``app``."""
    for module in (simulate, validate, train, evaluate, score, promote):
        module.register(app)
