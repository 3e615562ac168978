"""`recall gate`: would a candidate model replace the champion? The pipeline's promotion gate (recall.gate)
on any two models: both are scored on the tasks' test examples (their pipeline evaluations where they
have them, an evaluation with params.yaml's settings for the rest), the per-task differences are printed
with their 95% paired-bootstrap intervals, and the command exits 0 when the candidate would be promoted,
1 when it is refused (naming each task and its drop). The candidate must be better on the new task (the
last of --tasks) and not surely worse, by more than promote.tolerance, on any other.

A candidate that is the champion itself (the same folder) is "no change": exit 0, nothing evaluated.
With --promote the decision is recorded on the candidate's registered version: tags gate and gate.reason,
alias champion (promoted) or challenger (refused).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from recall import tracking
from recall.errors import RecallError

CHAMPION = f"models:/{tracking.REGISTERED_MODEL}@{tracking.CHAMPION}"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--candidate", required=True, help="a model folder, or a registered model (models:/recall-merged/4)")
    p.add_argument("--champion", default=CHAMPION, help=f"a model folder or registered model (default: {CHAMPION})")
    p.add_argument(
        "--tasks",
        type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
        help="comma-separated tasks compared, the candidate's new task last (default: the sequence of params.yaml)",
    )
    p.add_argument("--tolerance", type=float, help="points an earlier task may drop (default: promote.tolerance)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="the run's params (evaluation settings)")
    p.add_argument(
        "--promote", action="store_true", help="record the decision in MLflow: tags, alias champion or challenger"
    )
    p.set_defaults(func=run)


def model(spec: str, role: str) -> tuple[Path, str | None]:
    """The folder `spec` names, and its registered version when `spec` names one."""
    from recall.lineage import made_from, registered

    if Path(spec).is_dir():
        return Path(spec), None
    try:
        version = registered(spec)
    except RecallError as err:
        hint = " (no version promoted yet? give --champion a model folder, e.g. data/base/model)"
        raise RecallError(f"--{role}: {err}{hint if spec == CHAMPION else ''}") from None
    folder = made_from(version)
    if not folder.is_dir():
        raise RecallError(f"--{role} {spec} was made from {folder}, which is not here; `dvc pull` or `dvc repro` it")
    return folder, str(version.version)


def run(args: argparse.Namespace) -> int:
    import mlflow

    from recall.gate import decide
    from recall.pipeline import layout, stages
    from recall.pipeline.params import load_params

    params = load_params(args.params)
    mlflow.set_tracking_uri(tracking.tracking_uri(params.root))
    candidate, version = model(args.candidate, "candidate")
    champion, _ = model(args.champion, "champion")
    if candidate.resolve() == champion.resolve():
        print(f"no change: the candidate {candidate} is the champion")
        return 0
    names = args.tasks or layout.tasks(params)
    if missing := [t for t in names if not (params.data_dir / t / "test.jsonl").is_file()]:
        raise RecallError(f"no test data for {', '.join(missing)} in {params.data_dir}; run `dvc repro data` first")
    tolerance = params.sections.promote.tolerance if args.tolerance is None else args.tolerance
    with tempfile.TemporaryDirectory(prefix="recall-gate-") as tmp:
        records = [
            stages.scored(params, folder, stages.evaluation_of(params, folder), names, Path(tmp) / role)
            for folder, role in ((candidate, "candidate"), (champion, "champion"))
        ]
    decision = decide(*records, names, names[-1], tolerance)
    print(f"candidate {candidate}\nchampion  {champion}\n\n{decision.table()}\n")
    print(f"{'promoted' if decision.promoted else 'refused'}: {decision.reason}")
    if args.promote:
        tagged = tracking.record_gate(candidate, decision.promoted, decision.reason, version)
        alias = tracking.CHAMPION if decision.promoted else tracking.CHALLENGER
        print(f"{tracking.REGISTERED_MODEL} version {tagged}: gate={decision.record()['decision']}, alias {alias}")
    return 0 if decision.promoted else 1
