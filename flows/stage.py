"""One pipeline stage. DVC's stage commands run this:

    python -m flows.stage finetune --method recall --step gen_sentiment

It hands the stage to the warm stage worker that RECALL_STAGE_WORKER names (flows/worker.py; scripts/run.sh
starts one) and exits with its status, or, with no worker to take it, runs it here (flows/stage_flow.py):
either way the stage is one Prefect flow tracked as an MLflow run. Nothing heavy is imported before the
hand-off: that is the time a warm worker saves.
"""

from __future__ import annotations

import sys

from flows import worker
from recall.errors import end_process


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    status = worker.hand_off(argv)
    if status is not None:
        return status
    from flows import stage_flow

    return stage_flow.main(argv)


if __name__ == "__main__":
    end_process(main())  # a stage's outputs are written and closed when it returns
