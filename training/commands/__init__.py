"""One module per CLI command; each exposes ``register(app)``. Commands are thin over library code."""
