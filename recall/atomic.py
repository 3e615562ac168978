"""Atomic artifacts: write to a temporary sibling, rename when complete.

A killed run therefore never leaves a half-written file or folder under the final name, and a rerun
can trust whatever exists. Every folder written here carries a marker file, so that recall replaces
its own earlier outputs but never a folder it did not write (unless told to).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recall.errors import RecallError

MARKER = ".recall-output"  # in every folder atomic_dir writes: "recall may replace this"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(out: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> None:
    """Refuse to replace `out` when it holds something recall did not write; called before heavy work."""
    out = Path(out)
    if overwrite or not out.exists() or (out / MARKER).is_file() or (out.is_dir() and not any(out.iterdir())):
        return
    what = "a file" if not out.is_dir() else "a folder recall did not write"
    raise RecallError(
        f"{flag} {out} is {what}; recall only replaces its own outputs. "
        "Choose another path, or pass --overwrite to replace it"
    )


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False, needed: int | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces `out` only if the block succeeds; an existing `out`
    must be an earlier recall output (or empty) unless `overwrite`. A full disk is one error naming `out`
    and the bytes it `needed` (when the caller knows them)."""
    out = Path(out)
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it owner-only; the result is an ordinary folder
    try:
        yield tmp
        (tmp / MARKER).write_text("written by recall; recall may replace this folder\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            tmp.rename(out)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # first: what it held is free again
        size = f"it needs {needed:,} bytes and " if needed else ""
        free = shutil.disk_usage(out.parent).free
        raise RecallError(
            f"the disk filled up while writing {out}: {size}{free:,} bytes are free there; "
            "free some space or write the output elsewhere"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path of `out`; it is renamed over `out` if the block succeeds."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it owner-only; the result is an ordinary file
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of `out` for writing; rename it over `out` on success."""
    with atomic_path(out) as tmp, open(tmp, mode) as fh:
        yield fh


def write_json(out: str | os.PathLike, obj: Any) -> None:
    with atomic_file(out) as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return json.load(fh)
