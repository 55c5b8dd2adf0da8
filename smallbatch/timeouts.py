"""A time limit on user code that runs outside training (a plugin's import, constructor and the
conformance checks; the grid's validation probes), so a hanging plugin ends in one line.

``SMALLBATCH_PLUGIN_TIMEOUT`` (seconds, default 300) is the limit of each such call. It is a
``SIGALRM`` timer: it interrupts Python code and blocking sleeps, not a C extension that never
returns to the interpreter; in a thread other than the main one no limit applies. Imports nothing
of the package but :mod:`smallbatch.errors`.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import UserError

TIMEOUT_ENV = "SMALLBATCH_PLUGIN_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0


class TimeLimitExceeded(UserError, TimeoutError):
    """User code did not finish within its limit; the message names it and the limit."""


def plugin_timeout() -> float:
    """The limit in seconds (``SMALLBATCH_PLUGIN_TIMEOUT``; 0 or less: none)."""
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        return float(value)
    except ValueError:
        raise UserError(
            f"{TIMEOUT_ENV}={value!r} must be a number of seconds (0: no limit)"
        ) from None


@contextmanager
def time_limit(what: str, seconds: float | None = None) -> Iterator[None]:
    """Run the block under a limit of ``seconds`` (default :func:`plugin_timeout`); past it,
    raise :class:`TimeLimitExceeded` saying "<what> did not finish within N s". Nests: an inner
    limit never extends an outer one, and the outer one is restored afterwards."""
    limit = plugin_timeout() if seconds is None else seconds
    if limit <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):  # noqa: ARG001 - signal handler signature
        raise TimeLimitExceeded(
            f"{what} did not finish within {limit:g} s (a plugin that hangs?); set "
            f"{TIMEOUT_ENV} to allow longer, 0 for no limit"
        )

    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    armed = min(limit, outer_left) if outer_left else limit
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, armed)
    try:
        yield
    finally:
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left:  # the outer limit keeps running, less the time spent in here
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (armed - left), 1e-3))
