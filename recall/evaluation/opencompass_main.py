"""The OpenCompass child process: `python -m recall.evaluation.opencompass_main [CONFIG WORK_DIR]`.

Without arguments (as `recall.evaluation.runner.OpenCompass` starts it) it imports everything first and
then reads `["CONFIG", "WORK_DIR"]` from a line of stdin; stdin closed without one, it exits.

Runs what OpenCompass's command line runs for `opencompass CONFIG --work-dir PARENT --reuse NAME
--debug --dump-eval-details True`, minus what recall never reads, with a quicker start:
- the same partitioners and tasks, called directly: inference (`OpenICLInferTask`, one task for every
  dataset without predictions, so the model loads once), then one evaluation (`OpenICLEvalTask`) per
  dataset, its per-example details kept in the result file. As in debug mode, every task runs in
  this one process and a failing task raises (OpenCompass's runners otherwise log it and exit 0).
- no runner: in debug mode OpenCompass's `LocalRunner` only writes each task's config to `tmp/`
  (about 1.6 s of yapf formatting per task) before calling the task in its own process;
- no summarizer (`summary/`) and no copy of the config under `configs/`: recall reads the result
  files, and the config is `opencompass_config.py` beside the work dir;
- the few OpenCompass modules these use (`recall.evaluation.compat.lean_opencompass`), not the
  hundreds the command line imports.
WORK_DIR is the run folder itself (the command line's --work-dir PARENT --reuse NAME), so a killed
run resumes from the predictions it left there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from recall.errors import end_process
from recall.evaluation.compat import lean_opencompass, restore_batch_encode_plus


def import_opencompass() -> dict[str, type]:
    """Import what any evaluation uses, before its config is known: OpenCompass's partitioners and tasks,
    the classes the config names (OpenCompass imports them lazily, once it builds them) and
    transformers's model loading; returns the partitioners and tasks by name."""
    restore_batch_encode_plus()
    lean_opencompass()
    import transformers.modeling_utils  # noqa: F401
    from opencompass.partitioners.naive import NaivePartitioner
    from opencompass.partitioners.num_worker import NumWorkerPartitioner
    from opencompass.tasks.openicl_eval import OpenICLEvalTask
    from opencompass.tasks.openicl_infer import OpenICLInferTask

    import recall.evaluation.evaluator
    import recall.evaluation.inferencer
    import recall.evaluation.model  # noqa: F401

    return {
        "NaivePartitioner": NaivePartitioner,
        "NumWorkerPartitioner": NumWorkerPartitioner,
        "OpenICLEvalTask": OpenICLEvalTask,
        "OpenICLInferTask": OpenICLInferTask,
    }


def main(argv: list[str]) -> None:
    oc = import_opencompass()
    from mmengine.config import Config
    from opencompass.utils import get_logger

    if argv:
        config, work_dir = argv
    else:
        line = sys.stdin.readline()
        if not line:  # closed unused: the inputs were bad, or the run was cancelled
            return
        config, work_dir = json.loads(line)
    logger = get_logger(log_level="DEBUG")  # as --debug
    cfg = Config.fromfile(config)
    cfg.work_dir = str(Path(work_dir))
    logger.info(f"Current exp folder: {cfg.work_dir}")
    # The command line's defaults: one inference worker (--max-num-workers 1), one dataset per evaluation.
    infer = oc["NumWorkerPartitioner"](out_dir=str(Path(work_dir, "predictions")), num_worker=1)(cfg)
    cfg.eval = dict(runner=dict(task=dict(dump_details=True)))  # --dump-eval-details, kept by the partitioner
    evaluations = oc["NaivePartitioner"](out_dir=str(Path(work_dir, "results")))(cfg)
    for task in infer:
        oc["OpenICLInferTask"](task).run()
    for task in evaluations:
        oc["OpenICLEvalTask"](task).run()


if __name__ == "__main__":
    main(sys.argv[1:])
    # Every result file is written and closed; a failure raised above exits as usual.
    end_process(0)
