"""Free the disk of intermediate models that every stage reading them has used.

A task sequence writes a full model folder for each fine-tune and each merge (0.5 GB at SmolLM2-135M):
the protocol suite's 4 runs x 10 methods x 4 tasks would hold ~100 GB. An intermediate model is needed
again only to rerun a stage that reads it; once every such stage is recorded in dvc.lock with the
model's hash, `prune` deletes the model's folder and the cache objects no kept output shares, and
`dvc repro --allow-missing` then skips its stage as unchanged. dvc.lock keeps every hash (the lineage),
MLflow every metric and merge weight. When a changed stage must read a pruned model, a plain
`dvc repro` (without --allow-missing) writes it again from its own inputs first.

Kept: the base model, every model a stage not yet done reads, every model stages of several methods
read (a run's first-step expert: a method added to the params later starts from it, and a pruned one
could not be written again at its recorded hash, its train_metrics.json holding the training's
seconds), and every model only evaluation reads (each chain's newest), unless `finals`: a benchmark's
chains are there for their evaluations (the protocol's report reads nothing else), so their newest
models go too once evaluated; a model a gate
reads (the pipeline's product, registered by reference) stays either way. Lanes of one suite (other
checkouts of the same commit sharing this DVC cache) pass their checkouts: their finished stages count
as done, and their outputs' objects stay. At a lane's start (and before the whole suite's run) `adopt`
copies the lanes' finished stages into its dvc.lock, so DVC skips them there instead of rerunning the
stages whose models were pruned. Lanes should share no unfinished stage (benchmarks/protocol/lanes.sh
runs the shared ones first): a stage another lane finished after this lane started, whose model was
pruned, would run here again (correct, but wasted).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from recall.atomic import atomic_file
from recall.errors import RecallError, first_line

# Stage kinds (a stage name's first part, `layout.stage_name`) that write models, and those whose
# reading a model does not make it intermediate.
MODEL_WRITERS = frozenset({"finetune", "merge"})
EVALUATORS = frozenset({"evaluate", "gate"})
PRODUCT_READERS = frozenset({"gate"})  # a model they read is kept even with `finals`


@dataclass(frozen=True)
class Output:
    path: str  # relative to dvc.yaml's folder, as dvc.lock writes it
    md5: str


@dataclass(frozen=True)
class Pruned:
    folders: list[str]  # model folders deleted from this checkout
    objects: int  # cache objects deleted
    size: int  # bytes of those objects (freed once no checkout links them)


def kind(stage: str) -> str:
    return stage.split("-", 1)[0]


def prunable(stages: Mapping[str, dict], locks: Sequence[Mapping[str, dict]], finals: bool = False) -> list[Output]:
    """The finished model outputs that every stage reading them has read at their recorded hash.

    `stages` is dvc.yaml's `stages`; `locks` the `stages` of each lane's dvc.lock (a stage any lane
    recorded is done); `finals`: a chain's newest model too, once evaluated, unless a gate reads it."""
    done: dict[str, dict] = {}
    for lock in locks:
        for name, entry in lock.items():
            done.setdefault(name, entry)
    readers = defaultdict(list)
    for name, stage in stages.items():
        for dep in stage.get("deps", []):
            readers[dep].append(name)
    found = []
    for name, entry in done.items():
        if kind(name) not in MODEL_WRITERS or name not in stages:
            continue
        for out in entry.get("outs", []):
            path, md5 = out["path"], out["md5"]
            kinds = {kind(r) for r in readers[path]}
            if not kinds or kinds & PRODUCT_READERS or (kinds <= EVALUATORS and not finals):
                continue  # nobody's input, a gate's, or (without `finals`) a chain's newest model
            if len({method(stages[r]) for r in readers[path]} - {None}) > 1:
                continue  # several methods' chains start from it: so would one added later
            if all(_read_hash(done.get(r), path) == md5 for r in readers[path]):
                found.append(Output(path, md5))
    return found


def method(stage: Mapping) -> str | None:
    """The method a stage of `recall pipeline`'s dvc.yaml runs for (its command's `--method`), if any."""
    words = str(stage.get("cmd", "")).split()
    return words[words.index("--method") + 1] if "--method" in words[:-1] else None


def _read_hash(entry: dict | None, path: str) -> str | None:
    return next((d["md5"] for d in (entry or {}).get("deps", []) if d["path"] == path), None)


def read_lock(path: Path) -> dict[str, dict]:
    """A dvc.lock's stages; none for a lock not written yet. Another lane's DVC rewrites its lock in
    place as stages finish: read until two reads agree."""
    if not path.is_file():
        return {}
    text, previous = path.read_text(), None
    while text != previous:
        time.sleep(0.05)
        text, previous = path.read_text(), text
    try:
        return (yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}).get("stages", {})
    except yaml.YAMLError as e:
        raise RecallError(f"{path} could not be read ({e.__class__.__name__}); run the prune again") from None


def objects(cache: Path, md5: str) -> set[str]:
    """An output's file objects in a DVC cache (`.../files/md5`). A folder's `.dir` manifest itself is
    kept: it is small and lets DVC tell a pruned output from one never written."""
    if not md5.endswith(".dir"):
        return {md5}
    manifest = cache / md5[:2] / md5[2:]
    return {e["md5"] for e in json.loads(manifest.read_text())} if manifest.is_file() else set()


def _checkout(dvc_yaml: Path, lanes: Sequence[Path]) -> tuple[Path, Path, list[Path]]:
    """`dvc_yaml`'s folder, its DVC cache's `files/md5` folder, and the lanes' dvc.lock paths."""
    from dvc.repo import Repo

    if not dvc_yaml.is_file():
        raise RecallError(f"{dvc_yaml} does not exist; write it with `recall pipeline` first")
    from dvc.exceptions import NotDvcRepoError

    folder = dvc_yaml.resolve().parent
    try:
        repo = Repo(str(folder))
    except NotDvcRepoError:
        raise RecallError(f"{folder} is not in a DVC repository, so no cache to prune; run `dvc init`") from None
    try:
        cache = Path(repo.cache.local.path)
        relative = folder.relative_to(repo.root_dir)
    finally:
        repo.close()
    for lane in lanes:
        theirs = lane / relative / "dvc.yaml"
        if not theirs.is_file() or theirs.read_bytes() != dvc_yaml.read_bytes():
            raise RecallError(f"lane {lane}: its {relative}/dvc.yaml is not this one; pass this commit's checkout")
    return folder, cache, [lane / relative / "dvc.lock" for lane in lanes]


def adopt(dvc_yaml: Path, lanes: Sequence[Path]) -> int:
    """Copy the lanes' finished stages that this checkout's dvc.lock lacks into it (the same stage of the
    same dvc.yaml: DVC would record the same entry) and check out their outputs the cache holds (a
    stage DVC finds unchanged is skipped, not checked out); how many. All or nothing; only while no
    dvc repro runs here."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    folder, _, lane_locks = _checkout(dvc_yaml, lanes)
    own = read_lock(folder / "dvc.lock")
    added = {name: entry for lock in map(read_lock, lane_locks) for name, entry in lock.items() if name not in own}
    if not added:
        return 0
    _write_lock(folder / "dvc.lock", {**own, **added})
    # only the adopted stages': another stage's folder here may be a killed stage's resumable state
    targets = [f"{dvc_yaml.resolve()}:{name}" for name in added]
    try:
        with Repo(str(folder)) as repo:
            repo.checkout(targets=targets, allow_missing=True)
    except DvcException as e:  # this lane ran one of them too and left files there (DVC lists them)
        _write_lock(folder / "dvc.lock", own)
        files = str(e).splitlines()[1:] or [first_line(e)]
        raise RecallError(
            f"{folder}: files of a stage a lane finished, left here by the same stage: {', '.join(files[:3])}"
            f"{f' and {len(files) - 3} more' if len(files) > 3 else ''}; delete them and adopt again"
        ) from None
    return len(added)


def _write_lock(path: Path, stages: dict[str, dict]) -> None:
    with atomic_file(path) as f:
        yaml.safe_dump({"schema": "2.0", "stages": stages}, f, sort_keys=False)


def prune(dvc_yaml: Path, lanes: Sequence[Path] = (), dry_run: bool = False, finals: bool = False) -> Pruned:
    """Delete the prunable models of `dvc_yaml`'s pipeline (`prunable`) from its checkout and the DVC cache."""
    folder, cache, lane_locks = _checkout(dvc_yaml, lanes)
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    locks = [read_lock(folder / "dvc.lock"), *map(read_lock, lane_locks)]
    pruned = set(prunable(stages, locks, finals))
    kept = set().union(
        *(
            objects(cache, out["md5"])
            for lock in locks
            for entry in lock.values()
            for out in entry.get("outs", [])
            if Output(out["path"], out["md5"]) not in pruned
        )
    )
    doomed = set().union(*(objects(cache, o.md5) for o in pruned)) - kept
    folders = sorted(o.path for o in pruned if (folder / o.path).exists())
    if not dry_run:
        for path in folders:
            shutil.rmtree(folder / path)
    count = size = 0
    for md5 in doomed:
        file = cache / md5[:2] / md5[2:]
        try:
            bytes_ = file.stat().st_size
            if not dry_run:
                file.unlink()
        except FileNotFoundError:  # gone already: an earlier prune, or another lane's at the same time
            continue
        count, size = count + 1, size + bytes_
    return Pruned(folders, count, size)
