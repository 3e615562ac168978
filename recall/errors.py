"""One exception type for every user-facing problem, and the boundary that turns any failure into one line."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path


class RecallError(Exception):
    """A problem with the user's input: the message names what is wrong and how to fix it."""


def debugging(flag: bool = False) -> bool:
    """Tracebacks wanted: `--debug` or RECALL_DEBUG=1."""
    return flag or os.environ.get("RECALL_DEBUG", "") not in ("", "0")


def boundary(prog: str, work: Callable[[], int], debug: bool = False) -> int:
    """Run an entry point's `work`; any failure becomes one line on stderr and a non-zero exit.

    A RecallError is the user's to fix (exit 2); an OSError names the file the system could not use
    (exit 1); anything else is a bug in recall: its traceback goes to a file the line names (exit 1).
    With `debug` (or RECALL_DEBUG=1) every failure but a RecallError propagates with its traceback.
    """
    try:
        return work()
    except RecallError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debugging(debug):
            raise
        if isinstance(err, OSError) and err.filename is not None:
            print(f"{prog}: error: {err.strerror or err}: {err.filename}", file=sys.stderr)
            return 1
        with tempfile.NamedTemporaryFile("w", prefix="recall-bug-", suffix=".txt", delete=False) as fh:
            traceback.print_exc(file=fh)
        print(
            f"{prog}: internal error (a bug in recall, please report it): {type(err).__name__}: {err}; "
            f"full traceback in {fh.name} (rerun with --debug to see it here)",
            file=sys.stderr,
        )
        return 1


def read_text(path: str | os.PathLike) -> str:
    """The text of a file the user wrote; when it is not UTF-8, a RecallError naming the file and line."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise RecallError(
            f"{path}:{line}: not UTF-8 text (byte {raw[err.start]:#04x} at column {column}); save the file as UTF-8"
        ) from None
