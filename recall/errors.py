"""One exception type for every user-facing problem, and the boundary that turns any failure into one line."""

from __future__ import annotations

import atexit
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path


class RecallError(Exception):
    """A problem with the user's input: the message names what is wrong and how to fix it."""


class Cancelled(KeyboardInterrupt):
    """SIGTERM (Prefect cancelling a flow run, a scheduler's time limit), raised wherever the process is:
    like Ctrl-C, it unwinds every atomic write (no partial output) and is never retried, and a fine-tune's
    last checkpoint stays for the next run to resume from."""


def _cancel(signum: int, frame) -> None:
    raise Cancelled(signal.Signals(signum).name)


def debugging(flag: bool = False) -> bool:
    """Tracebacks wanted: `--debug` or RECALL_DEBUG=1."""
    return flag or os.environ.get("RECALL_DEBUG", "") not in ("", "0")


def boundary(prog: str, work: Callable[[], int], debug: bool = False) -> int:
    """Run an entry point's `work`; any failure becomes one line on stderr and a non-zero exit.

    A RecallError is the user's to fix (exit 2); an OSError names the file the system could not use
    (exit 1); SIGTERM and Ctrl-C stop the work (exit 143, 130); anything else is a bug in recall: its
    traceback goes to a file the line names (exit 1). With `debug` (or RECALL_DEBUG=1) a failure other
    than a RecallError propagates with its traceback.
    """
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    previous = signal.signal(signal.SIGTERM, _cancel) if main_thread else None
    try:
        return work()
    except RecallError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        cancelled = isinstance(err, Cancelled)
        print(
            f"{prog}: {f'cancelled ({err})' if cancelled else 'interrupted'}; nothing partial was kept, "
            "and a rerun resumes a fine-tune from its last checkpoint",
            file=sys.stderr,
        )
        return 128 + (signal.SIGTERM if cancelled else signal.SIGINT)
    except Exception as err:
        if debugging(debug):
            raise
        print(f"{prog}: {unexpected(err)}", file=sys.stderr)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def end_process(status: int) -> None:
    """End the process as the interpreter would, without its module-by-module teardown, which frees
    torch and transformers piece by piece (about 2 s of a stage process on this machine): non-daemon
    threads are joined (Prefect's log and event workers flush there) and atexit handlers run (MLflow
    ends its run, logging closes), then the process exits. Call it only when every output is written."""
    threading._shutdown()  # what the interpreter's shutdown does first; private, stable since 3.x
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def unexpected(err: Exception) -> str:
    """The line for an exception recall did not expect: a file the system refused, or a bug."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"error: {err.strerror or first_line(err)}: {err.filename}"
    with tempfile.NamedTemporaryFile("w", prefix="recall-bug-", suffix=".txt", delete=False) as fh:
        traceback.print_exception(err, file=fh)
    return (
        f"internal error (a bug in recall, please report it): {type(err).__name__}: {first_line(err)}; "
        f"full traceback in {fh.name} (rerun with --debug to see it here)"
    )


def first_line(err: BaseException) -> str:
    return next(iter(str(err).strip().splitlines()), "")


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
