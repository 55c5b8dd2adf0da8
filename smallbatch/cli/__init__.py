"""``smallbatch`` entry point: one table of commands, each with a line of help.

``fit``/``validate``/``test``/``predict`` are Lightning CLI runs (:mod:`smallbatch.run.cell`);
``grid``, ``report``, ``norms`` and ``bench`` are the suite's own; every runner is in
:mod:`smallbatch.cli.commands`.
``smallbatch --help`` lists them all; ``smallbatch COMMAND --help`` shows a command's options.
"""

from __future__ import annotations

import os
import sys

from .commands import COMMANDS


def _run_command(name: str, argv: list[str]) -> int:
    """Run one command; a user error ends with one ``error:`` line and exit code 2 (the full
    traceback with ``--debug`` or ``SMALLBATCH_DEBUG=1``); programming errors still raise."""
    from ..errors import debug_enabled, first_line, report, user_error_to_report

    try:
        return int(COMMANDS[name][0](argv) or 0)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as `ls` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:  # Ctrl-C before a run started (a run handles it itself)
        if debug_enabled(argv):
            raise
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        inner = user_error_to_report(exc)
        if inner is None or debug_enabled(argv):
            raise
        report(first_line(inner))
        return 2


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return (
        "usage: smallbatch COMMAND [options]   (smallbatch COMMAND --help for its options)\n\n"
        "Small-batch normalization benchmark suite.\n\ncommands:\n" + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from ..errors import did_you_mean

        hint = did_you_mean(name, COMMANDS)
        print(f"error: unknown command {name!r}{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    return _run_command(name, rest)
