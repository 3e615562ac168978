"""Run OpenCompass in a child process, its output copied to a log file and to stderr.

A child process rather than a call in this one: OpenCompass writes scratch folders into the current
directory and sets global logging, which would clash with other work in a pipeline's threads, and
the model's memory is returned to the system when the child ends.

The child starts before its config exists (`OpenCompass`): it spends its first seconds importing
torch, transformers and OpenCompass, which it does while this process checks the inputs and writes
the datasets and config (which load a tokenizer, the same imports), instead of after. It then waits
for `run` to hand it the config; closed unused (bad input, a failure), it is stopped unused.
"""

from __future__ import annotations

import codecs
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import recall

# The folder holding the `recall` package, so the child imports this same code even when it is not installed.
_SOURCE_ROOT = str(Path(recall.__file__).resolve().parents[1])


class OpenCompass:
    """OpenCompass's child process (`recall.evaluation.opencompass_main`), started and importing, its
    config to come: `run` once, then `close` (or use it as a context manager, which closes it).

    `threads`: the child's CPU threads (torch reads OMP_NUM_THREADS at start); None inherits them.
    """

    def __init__(self, threads: int | None = None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_SOURCE_ROOT, env.get("PYTHONPATH")]))
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        # OpenCompass leaves `tmp/` and `.cache/` in its working directory: give it a scratch one.
        self._scratch = tempfile.TemporaryDirectory(prefix="recall-opencompass-")
        self._child = subprocess.Popen(
            [sys.executable, "-m", "recall.evaluation.opencompass_main"],
            cwd=self._scratch.name,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def run(self, config: Path, work_dir: Path, log: Path) -> int:
        """Evaluate `config` with OpenCompass, outputs under `work_dir`; return the child's exit status.
        Everything the child printed, from its start, goes to `log` and to stderr."""
        child = self._child
        assert child.stdin is not None and child.stdout is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        with log.open("wb") as sink:
            try:
                child.stdin.write(json.dumps([str(config), str(work_dir)]).encode() + b"\n")
                child.stdin.close()
            except BrokenPipeError:  # it ended already: its output says why
                pass
            while chunk := child.stdout.read1(1 << 16):
                sink.write(chunk)
                sink.flush()
                sys.stderr.write(decoder.decode(chunk))
            return child.wait()

    def close(self) -> None:
        """Stop the child if it still runs (cancelled, failed here, or never given a config): OpenCompass
        and the workers it started stop too."""
        child = self._child
        try:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
                child.wait()
        finally:
            for pipe in (child.stdin, child.stdout):
                if pipe is not None and not pipe.closed:
                    try:
                        pipe.close()
                    except BrokenPipeError:
                        pass
            self._scratch.cleanup()

    def __enter__(self) -> OpenCompass:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_opencompass(
    config: Path, work_dir: Path, log: Path, threads: int | None = None, started: OpenCompass | None = None
) -> int:
    """Evaluate `config` with OpenCompass, outputs under `work_dir`; return the child's exit status.
    `started`: a child already importing (`OpenCompass(threads)`), else one is started here."""
    with started or OpenCompass(threads) as child:
        return child.run(config, work_dir, log)


def last_error(log: Path) -> str:
    """The last non-blank line of a log: after a crash, the exception and its message."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(empty log)"
