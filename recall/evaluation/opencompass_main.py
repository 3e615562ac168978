"""The OpenCompass child process: `python -m recall.evaluation.opencompass_main CONFIG WORK_DIR`.

Runs OpenCompass's own command line in debug mode, so every task runs in this one process (no
per-task interpreter paying the imports again) and a failing task raises instead of being logged
and skipped; OpenCompass's command line otherwise exits 0 whatever happened.
"""

from __future__ import annotations

import sys
from pathlib import Path

from recall.evaluation.compat import restore_batch_encode_plus


def main(argv: list[str]) -> None:
    config, work_dir = argv
    work_dir = Path(work_dir)
    restore_batch_encode_plus()
    from opencompass.cli.main import main as opencompass_main

    # --reuse NAME makes WORK_DIR itself the run folder instead of a new timestamped one inside it,
    # and lets OpenCompass resume from the predictions a killed run left there. --dump-eval-details
    # (0.5.4's default, said explicitly) keeps the evaluators' per-example details in the result files.
    sys.argv = [
        "opencompass",
        config,
        "--work-dir",
        str(work_dir.parent),
        "--reuse",
        work_dir.name,
        "--debug",
        "--dump-eval-details",
        "True",
    ]
    opencompass_main()


if __name__ == "__main__":
    main(sys.argv[1:])
