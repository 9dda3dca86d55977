"""What the two CLIs (`s2rt`, `s2conv`) share, so that they fail alike.

Exit status: 0 done, 2 usage error (argparse's own, a flag's value, an output path that
cannot be written), 1 runtime failure (a model that cannot be converted, a bundle that
cannot be read, a backend that fails), 130 interrupted, 141 stdout closed early
(`s2rt predict … | head -1`, as a C tool killed by SIGPIPE). Every error is one line,
`PROG: error: MESSAGE`, on stderr; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

from s2rt.errors import S2LError, UsageError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is the one line `PROG: error: MESSAGE (see `PROG CMD --help`)`, exit 2.

    Subparsers made by `add_subparsers` are of this class too.
    """

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")
        self.exit(EXIT_USAGE, f"{self.prog.split()[0]}: error: {message} (see `{self.prog} --help`)\n")


def refuse_misspelled_command(prog: str, word: str, commands: Iterable[str]) -> None:
    """Exit 2 with `unknown command 'inspekt'; did you mean 'inspect'?` when `word` is close
    to a command name without being one; otherwise return (argparse or the caller decide)."""
    names = list(commands)
    if word in names:
        return
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    if close:
        sys.stderr.write(f"{prog}: error: unknown command {word!r}; did you mean {close[0]!r}? (see `{prog} --help`)\n")
        sys.exit(EXIT_USAGE)


def run_main(prog: str, run: Callable[[], int], debug: Callable[[], bool]) -> int:
    """`run()` with the CLIs' error contract (see the module docstring). `debug()` says
    whether to let an error's traceback through (it is asked only when one happens)."""
    try:
        code = run()
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return code
    except BrokenPipeError:
        return _stdout_gone()
    except UsageError as e:
        return _fail(prog, e, EXIT_USAGE, debug)
    except S2LError as e:
        return _fail(prog, e, EXIT_FAILURE, debug)
    except OSError as e:  # a file problem no stage named: still one line that names the file
        where = f"{e.filename}: " if e.filename else ""
        return _fail(prog, OSError(f"{where}{e.strerror or e}"), EXIT_FAILURE, debug)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _fail(prog: str, error: Exception, code: int, debug: Callable[[], bool]) -> int:
    if debug():
        raise  # noqa: PLE0704 - re-raises the exception being handled by the caller
    print(f"{prog}: error: {error}", file=sys.stderr)
    return code


def _stdout_gone() -> int:
    """The reader of stdout went away: say nothing more, and keep Python's exit-time
    flush of stdout from raising again (the pattern the `signal` docs give)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


# -- flag values: argparse `type=` checkers whose messages read like `_require_*`'s ----------


def int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    value = _number(text, "a finite number > 0")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = _number(text, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def _number(text: str, expected: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


# -- output files: checked before the work starts -------------------------------------------


def check_writable(flag: str, path: str | os.PathLike[str]) -> None:
    """UsageError naming `flag` unless a file can be created or replaced at `path`
    (missing parent folders are fine: the writers create them)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {p}: is a directory; expected a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"{flag} {p}: the file is not writable")
    _check_creatable(flag, p, p.parent)


def check_folder(flag: str, path: str | os.PathLike[str]) -> None:
    """UsageError naming `flag` unless `path` is a folder, or one can be made there."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {p}: is a file; expected a folder")
    if not p.exists():
        _check_creatable(flag, p, p.parent)


def _check_creatable(flag: str, p: Path, folder: Path) -> None:
    """The nearest existing ancestor of `folder` is a folder we may write to."""
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {p}: cannot write there: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {p}: cannot write there: the folder {folder} is not writable")
