"""The ``alliance-risk`` command: composes the training and service command groups."""
