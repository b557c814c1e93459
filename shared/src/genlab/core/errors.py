"""User-facing errors: a mistake by the person running a script, reported as one line, never a stack trace."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class GenlabError(Exception):
    """A user mistake (unknown dataset, missing data, wrong checkpoint, bad flag) with a message to show."""


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a console script so a GenlabError prints one line to stderr and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except GenlabError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
