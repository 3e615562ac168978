"""Run OpenCompass in a child process, its output copied to a log file and to stderr.

A child process rather than a call in this one: OpenCompass writes scratch folders into the current
directory and sets global logging, which would clash with other work in a pipeline's threads, and
the model's memory is returned to the system when the child ends.
"""

from __future__ import annotations

import codecs
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import recall

# The folder holding the `recall` package, so the child imports this same code even when it is not installed.
_SOURCE_ROOT = str(Path(recall.__file__).resolve().parents[1])


def run_opencompass(config: Path, work_dir: Path, log: Path, threads: int | None = None) -> int:
    """Evaluate `config` with OpenCompass, outputs under `work_dir`; return the child's exit status.

    `threads`: the child's CPU threads (torch reads OMP_NUM_THREADS at start); None inherits them.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_SOURCE_ROOT, env.get("PYTHONPATH")]))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "recall.evaluation.opencompass_main", str(config), str(work_dir)]
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    # OpenCompass leaves `tmp/` and `icl_inference_output/` in its working directory: give it a scratch one.
    with tempfile.TemporaryDirectory(prefix="recall-opencompass-") as scratch, log.open("wb") as sink:
        child = subprocess.Popen(
            command, cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        assert child.stdout is not None
        try:
            while chunk := child.stdout.read1(1 << 16):
                sink.write(chunk)
                sink.flush()
                sys.stderr.write(decoder.decode(chunk))
            return child.wait()
        finally:  # cancelled or failed here: OpenCompass and the workers it started stop too
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
                child.wait()


def last_error(log: Path) -> str:
    """The last non-blank line of a log: after a crash, the exception and its message."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(empty log)"
