"""One router per resource: risk, model, health."""
