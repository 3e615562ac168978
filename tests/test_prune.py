"""`recall prune`: intermediate models go once every reader has used them, in a real DVC project whose
stages are named as `recall pipeline` names them; `dvc repro --allow-missing` then runs nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recall.errors import RecallError
from recall.pipeline.prune import adopt, prunable, prune, read_lock


def _model(out: str, text: str) -> str:
    # a "model" folder: its own weights, and a tokenizer every model shares (one cache object)
    return f"mkdir -p {out} && echo {text} > {out}/model.safetensors && echo shared > {out}/tokenizer.json"


def _read(kind: str, model: str, out: str) -> dict:
    # a stage that reads a model and writes something else (features, an evaluation)
    return {"cmd": f"(echo {kind}; cat {model}/model.safetensors) > {out}", "deps": [model], "outs": [out]}


# A two-step chain: the base, a fine-tune and merge per step, features read by the merge, evaluations.
STAGES = {
    "base": {"cmd": _model("base", "base"), "outs": ["base"]},
    "finetune-a": {"cmd": _model("a/sft", "sft-a"), "deps": ["base"], "outs": ["a/sft"]},
    "merge-recall-a": {"cmd": _model("a/model", "merged-a"), "deps": ["a/sft", "base"], "outs": ["a/model"]},
    "evaluate-recall-a": _read("eval", "a/model", "eval-a"),
    "finetune-b": {"cmd": _model("b/sft", "sft-b"), "deps": ["a/model"], "outs": ["b/sft"]},
    "features-b": _read("features", "b/sft", "feat-b"),
    "merge-recall-b": {
        "cmd": _model("b/model", "merged-b"),
        "deps": ["b/sft", "a/model", "feat-b"],
        "outs": ["b/model"],
    },
    "evaluate-recall-b": _read("eval", "b/model", "eval-b"),
}


def _dvc(root: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def project(tmp_path: Path) -> Path:
    _dvc(tmp_path, "init", "--no-scm", "-q")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": STAGES}, sort_keys=False))
    return tmp_path


def _cache_files(root: Path) -> set[str]:
    return {p.name for p in (root / ".dvc/cache/files/md5").rglob("*") if p.is_file()}


def test_prunes_what_every_reader_used_and_repro_skips_it(project: Path) -> None:
    _dvc(project, "repro", "-q", "evaluate-recall-a")
    # b's stages have not run: a/model is still needed (finetune-b, merge-recall-b); a/sft is not
    assert [o.path for o in prunable(STAGES, [read_lock(project / "dvc.lock")])] == ["a/sft"]

    _dvc(project, "repro", "-q")
    before = _cache_files(project)
    result = prune(project / "dvc.yaml")
    # the intermediates go; the base, the newest model (read only by evaluation) and non-models stay
    assert result.folders == ["a/model", "a/sft", "b/sft"]
    assert not any((project / p).exists() for p in result.folders)
    assert (project / "b/model/model.safetensors").read_text() == "merged-b\n"
    assert (project / "base/tokenizer.json").exists() and (project / "feat-b").exists()
    gone = before - _cache_files(project)
    assert len(gone) == result.objects == 3  # their three weights files; the shared tokenizer stays

    # DVC skips every finished stage, pruned or not, and a second prune finds nothing new
    assert "Running stage" not in _dvc(project, "repro", "--allow-missing")
    assert prune(project / "dvc.yaml").objects == 0

    # a changed stage reads a pruned model: a plain dvc repro writes it again from its own inputs
    changed = {**STAGES, "finetune-b": {**STAGES["finetune-b"], "cmd": _model("b/sft", "sft-b2")}}
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": changed}, sort_keys=False))
    ran = _dvc(project, "repro", "evaluate-recall-b")
    assert all(f"Running stage '{s}'" in ran for s in ("finetune-a", "merge-recall-a", "finetune-b", "merge-recall-b"))
    assert (project / "a/model/model.safetensors").read_text() == "merged-a\n"


def test_a_model_several_methods_read_stays_for_a_method_added_later() -> None:
    # a run's first expert, read by SeqFT's next fine-tune and RECALL's merge, as `recall pipeline` names them
    stage = lambda cmd, deps, outs: {"cmd": f"python -m flows.stage {cmd}", "deps": deps, "outs": outs}  # noqa: E731
    stages = {
        "finetune-a": stage("finetune --step a", ["base"], ["a/sft"]),
        "finetune-sft-b": stage("finetune --method sft --step b", ["a/sft"], ["b/sft"]),
        "merge-recall-a": stage("merge --method recall --step a", ["a/sft", "base"], ["a/recall"]),
        "finetune-recall-b": stage("finetune --method recall --step b", ["a/recall"], ["b/recall-sft"]),
        "merge-recall-b": stage("merge --method recall --step b", ["b/recall-sft", "a/recall"], ["b/recall"]),
    }
    lock = {
        name: {
            "deps": [{"path": d, "md5": f"{d}-hash"} for d in entry["deps"]],
            "outs": [{"path": o, "md5": f"{o}-hash"} for o in entry["outs"]],
        }
        for name, entry in stages.items()
    }
    # RECALL's own intermediates go; the expert both chains read stays, and so do the chains' newest
    assert sorted(o.path for o in prunable(stages, [lock])) == ["a/recall", "b/recall-sft"]


def test_finals_go_once_evaluated_unless_a_gate_reads_them(project: Path, tmp_path_factory) -> None:
    _dvc(project, "repro", "-q", "merge-recall-b")  # the newest model, not yet evaluated: it stays
    assert "b/model" not in [o.path for o in prunable(STAGES, [read_lock(project / "dvc.lock")], finals=True)]

    _dvc(project, "repro", "-q")
    result = prune(project / "dvc.yaml", finals=True)
    assert result.folders == ["a/model", "a/sft", "b/model", "b/sft"]
    assert (project / "eval-b").read_text() == "eval\nmerged-b\n" and (project / "base/model.safetensors").exists()
    assert "Running stage" not in _dvc(project, "repro", "--allow-missing")

    # a model a gate has read is the pipeline's product: it stays with `finals` too
    gated = tmp_path_factory.mktemp("gated")
    _dvc(gated, "init", "--no-scm", "-q")
    stages = {**STAGES, "gate-recall-b": _read("gate", "b/model", "gate-b")}
    (gated / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    _dvc(gated, "repro", "-q")
    assert prune(gated / "dvc.yaml", finals=True).folders == ["a/model", "a/sft", "b/sft"]
    assert (gated / "b/model/model.safetensors").exists()


def test_a_lane_counts_its_finished_stages_and_keeps_its_objects(project: Path, tmp_path_factory) -> None:
    lane = tmp_path_factory.mktemp("lane")
    _dvc(lane, "init", "--no-scm", "-q")
    _dvc(lane, "config", "--local", "cache.dir", str(project / ".dvc/cache"))
    # a stage no lane finished, whose folder here is a killed run's resumable state: adopt leaves it
    stages = {**STAGES, "evaluate-recall-later": _read("eval", "b/model", "later")}
    for checkout in (project, lane):
        (checkout / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (project / "later").mkdir()
    (project / "later/predictions.json").write_text("{}")
    _dvc(project, "repro", "-q", "evaluate-recall-a")  # this checkout: step a
    _dvc(lane, "repro", "-q", "evaluate-recall-b")  # the lane: step b (and a again, from the run cache)

    # alone, this checkout keeps a/model (b's stages are not in its dvc.lock); with the lane it goes
    assert [o.path for o in prunable(STAGES, [read_lock(project / "dvc.lock")])] == ["a/sft"]
    result = prune(project / "dvc.yaml", [lane])
    assert result.folders == ["a/model", "a/sft"]
    assert (lane / "a/model/model.safetensors").exists()  # the lane prunes its own checkout

    # a stage the lane finished that this checkout started too: nothing adopted, the file named
    (project / "eval-b").write_text("killed half-way")
    lock = read_lock(project / "dvc.lock")
    with pytest.raises(RecallError, match="left here by the same stage: .*eval-b; delete them"):
        adopt(project / "dvc.yaml", [lane])
    assert read_lock(project / "dvc.lock") == lock and (project / "eval-b").read_text() == "killed half-way"
    (project / "eval-b").unlink()

    assert adopt(project / "dvc.yaml", [lane]) == 4  # b's four stages, their outputs checked out here
    assert (project / "eval-b").read_text() == "eval\nmerged-b\n" and not (project / "b/sft").exists()
    assert (project / "later/predictions.json").read_text() == "{}"
    assert "Running stage" not in _dvc(project, "repro", "--allow-missing", "evaluate-recall-b")
    assert adopt(project / "dvc.yaml", [lane]) == 0


def test_a_new_checkout_adopts_a_lanes_stages_without_a_dvc_lock_of_its_own(project: Path, tmp_path_factory) -> None:
    # benchmarks/protocol/run.sh in a lane's new worktree (lanes.sh): its first start adopts too
    lane = tmp_path_factory.mktemp("lane")
    _dvc(lane, "init", "--no-scm", "-q")
    _dvc(lane, "config", "--local", "cache.dir", str(project / ".dvc/cache"))
    (lane / "dvc.yaml").write_text((project / "dvc.yaml").read_text())
    _dvc(lane, "repro", "-q")
    assert prune(lane / "dvc.yaml").folders == ["a/model", "a/sft", "b/sft"]
    assert not (project / "dvc.lock").exists()
    assert adopt(project / "dvc.yaml", [lane]) == len(STAGES)
    assert "Running stage" not in _dvc(project, "repro", "--allow-missing")
    assert (project / "eval-b").read_text() == "eval\nmerged-b\n" and not (project / "a/model").exists()


def test_bad_input_names_the_problem(project: Path, tmp_path: Path, tmp_path_factory) -> None:
    with pytest.raises(RecallError, match="write it with `recall pipeline`"):
        prune(tmp_path / "nowhere" / "dvc.yaml")
    bare = tmp_path_factory.mktemp("bare")  # outside the project's DVC repository
    (bare / "dvc.yaml").write_text((project / "dvc.yaml").read_text())
    with pytest.raises(RecallError, match="is not in a DVC repository.*run `dvc init`"):
        prune(bare / "dvc.yaml")
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(RecallError, match="pass this commit.s checkout"):
        prune(project / "dvc.yaml", [other])
    (project / "dvc.lock").write_text("stages: [unclosed")
    with pytest.raises(RecallError, match="run the prune again"):
        prune(project / "dvc.yaml")
