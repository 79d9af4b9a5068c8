"""The errors a search raises for its user: each says what went wrong and what to do next."""

from __future__ import annotations


class SearchError(RuntimeError):
    """A search that could not start or stopped with an error; says what to do next."""


class TrainableError(SearchError):
    """A trainable that cannot be found or loaded; says what was looked for."""
