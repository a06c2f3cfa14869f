"""Silencing one logger's noise for a moment, with a filter rather than a level (transformers reads levels)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def dropped_logs(logger_name: str, drop: Callable[[logging.LogRecord], bool]) -> Iterator[None]:
    """Within the block, records of `logger_name` for which `drop(record)` is true are not emitted."""
    target = logging.getLogger(logger_name)

    def keep(record: logging.LogRecord) -> bool:
        return not drop(record)

    target.addFilter(keep)
    try:
        yield
    finally:
        target.removeFilter(keep)
