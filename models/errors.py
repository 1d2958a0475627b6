"""The one error the model zoo raises for a model it cannot give: the command line reports it in one line."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that is missing, of a refused format, or does not match the architecture."""
