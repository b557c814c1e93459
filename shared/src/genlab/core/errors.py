"""User-facing errors: a mistake by the person running a script, reported as one line, never a stack trace."""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class GenlabError(Exception):
    """A user mistake (unknown dataset, missing data, wrong checkpoint, bad flag) with a message to show."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM outside the training loop, which handles its own signals (a checkpoint first)."""


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a console script so a GenlabError prints one line to stderr and exits with status 2, and Ctrl-C or
    SIGTERM outside the training loop (loading data, a final evaluation, sampling) one line and 128 + signal."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_interrupted) if in_main_thread else None
        try:
            return main(*args, **kwargs)
        except GenlabError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt as interrupt:
            signum = signal.SIGTERM if isinstance(interrupt, Interrupted) else signal.SIGINT
            print(f"\nstopped by {signum.name}; a run's checkpoints are written whole or not at all", file=sys.stderr)
            raise SystemExit(128 + signum) from None
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)

    return wrapper
