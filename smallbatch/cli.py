"""``smallbatch`` entry point: one table of commands, each with a line of help.

``fit``/``validate``/``test``/``predict`` are Lightning CLI runs (:mod:`smallbatch.lightning_cli`);
``grid``, ``report``, ``norms`` and ``bench`` are the suite's own (:mod:`smallbatch.commands`).
``smallbatch --help`` lists them all; ``smallbatch COMMAND --help`` shows a command's options.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from . import commands


def _lightning(subcommand: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        from .lightning_cli import lightning_main

        lightning_main([subcommand, *[a for a in argv if a != "--debug"]])
        return 0

    return run


def _run_command(name: str, argv: list[str]) -> int:
    """Run one command; a user error ends with one ``error:`` line and exit code 2 (the full
    traceback with ``--debug`` or ``SMALLBATCH_DEBUG=1``); programming errors still raise."""
    from .errors import debug_enabled, first_line, innermost_user_error, report

    try:
        return int(COMMANDS[name][0](argv) or 0)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as `ls` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        inner = innermost_user_error(exc)
        if inner is None or debug_enabled(argv):
            raise
        report(first_line(inner))
        return 2


# name -> (runner, one line of help); the order is the order of `smallbatch --help`
COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "fit": (_lightning("fit"), "train one cell (Lightning CLI: --config, --model.*, --data.*)"),
    "validate": (_lightning("validate"), "evaluate a checkpoint on the validation set"),
    "test": (_lightning("test"), "evaluate a checkpoint on the test set"),
    "predict": (_lightning("predict"), "run a checkpoint's predictions"),
    "grid": (commands.grid_command, "run or resume a grid of cells (configs/grid/*.yaml)"),
    "report": (commands.report_command, "table, CSV and plot of a grid's results"),
    "norms": (commands.norms_command, "every registered norm, built-in or plugin"),
    "bench": (commands.bench_command, "step time and memory per norm, ratios to BN"),
}


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
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"error: unknown command {name!r}{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    return _run_command(name, rest)


if __name__ == "__main__":
    sys.exit(main())
