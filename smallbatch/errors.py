"""User errors as one line: what was wrong and what is accepted, with a "did you mean" where a
close match exists; the full traceback only with ``--debug`` or ``SMALLBATCH_DEBUG=1``.

The bottom of the package: it imports nothing from smallbatch, and every module may import it."""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

DEBUG_ENV = "SMALLBATCH_DEBUG"


def debug_enabled(argv: list[str] | None = None) -> bool:
    """``--debug`` on the command line or ``SMALLBATCH_DEBUG=1``: show full tracebacks."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in (argv or [])


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The one of ``choices`` closest to ``word`` (difflib's ratio >= 0.6), or None: the suite's
    only spelling rule, behind every "did you mean"."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    close = closest(word, choices)
    return f"; did you mean {close!r}?" if close else ""


class UserError(Exception):
    """Bad input: a message for the user (what was wrong, what is accepted), not a bug in the
    suite. Every user-error class of the package inherits it (norm, backbone, dataset and grid
    errors); the CLI prints its first line and exits 2."""


def where_raised(exc: BaseException) -> str:
    """``file:line`` where the first error of ``exc``'s chain of causes was raised (its
    innermost frame outside Python's import machinery: where a module's own import or a
    constructor failed), or ``""``."""
    import traceback

    seen = {id(exc)}
    while (cause := exc.__cause__ or exc.__context__) is not None and id(cause) not in seen:
        seen.add(id(cause))
        exc = cause
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")
    ]
    if isinstance(exc, SyntaxError) and exc.filename:  # the file that does not parse
        return f"{exc.filename}:{exc.lineno}"
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def error_summary(exc: BaseException) -> str:
    """``Type: first line (file:line)``: an error said whole, with where it was raised."""
    where = where_raised(exc)
    return f"{type(exc).__name__}: {first_line(exc)}" + (f" ({where})" if where else "")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def user_error_to_report(exc: BaseException | None) -> BaseException | None:
    """The user error to report from the chain of causes of ``exc``: the outermost
    :class:`UserError` (it carries the context its causes lack, such as the layer's name that
    ``swap_norms`` adds), else the deepest ValueError raised by the suite's own code (the
    message jsonargparse wraps in its "Given value" report)."""
    found, seen = None, set()
    outer: list[BaseException] = []
    types = (UserError, ValueError)
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, types) and type(exc).__module__ != "jsonargparse._common":
            tb = exc.__traceback__
            frames = []
            while tb is not None:
                frames.append(tb.tb_frame.f_code.co_filename)
                tb = tb.tb_next
            if isinstance(exc, UserError):
                outer.append(exc)
            if isinstance(exc, UserError) or any("smallbatch" in f for f in frames):
                found = exc
        exc = exc.__cause__ or exc.__context__
    return outer[0] if outer else found


_UNRECOGNIZED = re.compile(r"unrecognized arguments: (--?[\w.\-]+)")
_NO_FILE = re.compile(r"File does not exist: '([^']+)'")
_NOT_ACCEPTED = re.compile(r"Option '([\w.]+)' is not accepted")


def summarize_parse_error(message: str, ex: BaseException | None, options: Iterable[str]) -> str:
    """One line for a command-line parse error, with a suggestion for a misspelt option."""
    inner = user_error_to_report(ex)
    if inner is not None:
        return first_line(inner)
    line = message.strip().splitlines()[0] if message.strip() else "invalid arguments"
    if line.rstrip().endswith(":"):  # jsonargparse puts the reason on the lines below
        line = f"{line.rstrip()} {_reason(message)}"
    match = _UNRECOGNIZED.search(line)
    if match:
        line += did_you_mean(match.group(1), options)
    missing = _NO_FILE.search(line)
    if missing:  # a misspelt --config file: suggest one beside it
        path = Path(missing.group(1))
        siblings = [p.name for p in path.parent.glob("*.y*ml")] if path.parent.is_dir() else []
        if close := closest(path.name, siblings):
            line += f"; did you mean {str(path.parent / close)!r}?"
    if "accept option 'axes." in line or "accept option 'executor." in line:
        line += "; this looks like a grid file: run it with `smallbatch grid --config FILE`"
    if "arguments are required" in line and ".data" in line:
        line += "; give a config, e.g. --config configs/quickstart.yaml"
    match = _NOT_ACCEPTED.search(line)
    if match:  # a key inside a class's init_args: suggest among the leaf names
        leaves = {o.lstrip("-").rsplit(".", 1)[-1] for o in options}
        line += did_you_mean(match.group(1), leaves)
    return line


_EXPECTED = re.compile(r"Expected a <class '(\w+)'>")
_GIVEN = re.compile(r"Given value: (.*)")


def _reason(message: str) -> str:
    """The reason jsonargparse gives below its "Parser key ...:" line, on one line: what was
    given and what is accepted (JSON for a mapping), else its first detail line."""
    expected = [e for e in _EXPECTED.findall(message) if e != "NoneType"]
    given = _GIVEN.search(message)
    if expected:
        accepted = "a JSON object, e.g. '{\"window\": 4}'" if "dict" in expected else expected[0]
        shown = f"{given.group(1).strip()!r} " if given else ""
        return f"the value {shown}is not {accepted}".replace("not a JSON", "not valid as a JSON")
    details = [ln.strip() for ln in message.strip().splitlines()[1:] if ln.strip()]
    return details[0] if details else "invalid value"


def report(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
