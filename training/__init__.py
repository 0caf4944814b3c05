"""Data loading and validation at the edge, simulation, splits, fitting, evaluation, reports, CLI."""
