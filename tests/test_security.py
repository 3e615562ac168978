"""Nothing from a model folder runs as code unless the user opts in: every command that loads a model
refuses a folder that ships code (`auto_map`) before any work, and leaves nothing behind."""

import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from test_faults import error_line

from recall import models
from recall.errors import RecallError
from recall.tasks.generated import generate_suite
from recall.training.finetune import checkpoint_folder

# Imported by transformers only if it trusts the folder's code: its import leaves the marker.
PLANTED = """\
from pathlib import Path
Path({marker!r}).write_text("ran")
from transformers import LlamaConfig, LlamaForCausalLM
class PlantedConfig(LlamaConfig):
    pass
class PlantedModel(LlamaForCausalLM):
    config_class = PlantedConfig
"""


def plant(model, marker, config_file: str = "config.json"):
    """Point `config_file`'s `auto_map` at a module beside it that writes `marker` when imported."""
    (model / "planted.py").write_text(PLANTED.format(marker=str(marker)))
    config = json.loads((model / config_file).read_text())
    config["auto_map"] = {"AutoConfig": "planted.PlantedConfig", "AutoModelForCausalLM": "planted.PlantedModel"}
    (model / config_file).write_text(json.dumps(config))
    return model


@pytest.fixture
def suite(tmp_path):
    generate_suite(tmp_path / "data", seed=0, train=8, test=4)
    return tmp_path / "data"


def commands(planted, clean, suite, out):
    """Every command that loads a model, `planted` among its models."""
    data = suite / "gen_sentiment" / "train.jsonl"
    merge = ["merge", "--models", clean, planted, "--out", out]
    return {
        "merge": [*merge, "--method", "average"],
        "merge-recall": [*merge, "--method", "recall", "--data", data, "--typical", 2],
        "merge-base": ["merge", "--method", "task_arithmetic", "--models", clean, "--base", planted, "--out", out],
        "finetune": ["finetune", "--base", planted, "--task", "gen_sentiment", "--data-dir", suite, "--out", out],
        "evaluate": ["evaluate", "--model", planted, "--tasks", "gen_sentiment", "--data-dir", suite, "--out", out],
    }


@pytest.mark.parametrize("command", ["merge", "merge-recall", "merge-base", "finetune", "evaluate"])
@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
def test_code_in_a_model_folder_is_refused_before_any_work(make_model, suite, tmp_path, capsys, command, config_file):
    marker = tmp_path / "marker"
    planted = plant(make_model("planted", seed=1), marker, config_file)
    (planted / "model.safetensors").write_bytes(b"never read")  # the refusal comes first
    out = tmp_path / "out"
    assert run_cli(*commands(planted, make_model("clean"), suite, out)[command]) == 2
    line = error_line(capsys)
    assert f"{planted}: {config_file} has `auto_map`" in line and "--trust-remote-code" in line
    assert not marker.exists() and not out.exists()


def test_an_architecture_transformers_does_not_know_is_refused(make_model, tmp_path, capsys):
    model = make_model("a")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"model_type": "planted_arch"}))
    assert run_cli("merge", "--method", "average", "--models", make_model("b"), model, "--out", tmp_path / "out") == 2
    line = error_line(capsys)
    assert f"{model}: config.json's model_type 'planted_arch' is no architecture" in line
    assert "--trust-remote-code" in line and not (tmp_path / "out").exists()


def test_the_opt_in_runs_the_folder_code_and_is_recorded(make_model, tmp_path, monkeypatch):
    """The flag means what it says: transformers imports the planted module, and the output says so."""
    monkeypatch.setattr(models, "_remote_code_allowed", False)  # the opt-in is process-wide: undone after
    marker = tmp_path / "marker"
    planted = plant(make_model("planted", seed=1), marker)
    out = tmp_path / "out"
    args = ["merge", "--method", "average", "--models", make_model("clean"), planted, "--out", out]
    assert run_cli(*args, "--trust-remote-code") == 0
    assert marker.read_text() == "ran"
    assert json.loads((out / "merge_weights.json").read_text())["trust_remote_code"] is True


class Planted:
    """Unpickled, it would write a marker: what a planted checkpoint does to a plain torch.load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path(self.marker).write_text, ("ran",))


@pytest.mark.parametrize("content", ["planted", "truncated"])
def test_a_checkpoint_that_is_no_weights_only_state_is_set_aside(make_model, suite, tmp_path, caplog, content):
    marker, out = tmp_path / "marker", tmp_path / "out"
    state = checkpoint_folder(out) / "state.pt"
    state.parent.mkdir()
    if content == "planted":
        torch.save({"fingerprint": Planted(marker), "step": 1}, state)
    else:
        torch.save({"fingerprint": "x", "step": 1}, state)
        state.write_bytes(state.read_bytes()[:100])
    planted = state.read_bytes()
    args = ["--task", "gen_sentiment", "--data-dir", suite, "--out", out, "--max-steps", 2, "--checkpoint-every", 1]
    assert run_cli("finetune", "--base", make_model("a"), *args) == 0
    aside = state.parent.with_name(f"{state.parent.name}-rejected-state.pt")
    assert f"checkpoint {state} is not a weights-only training state" in caplog.text and "starting over" in caplog.text
    assert not marker.exists() and aside.read_bytes() == planted
    assert (out / "model.safetensors").is_file() and not state.parent.exists()


def test_the_pipeline_refuses_a_base_with_code_unless_params_opt_in(tmp_path, monkeypatch):
    from helpers import tiny_model
    from test_pipeline import tiny_params, write_params

    from recall.pipeline import layout, table
    from recall.pipeline.params import load_params

    monkeypatch.setattr(models, "_remote_code_allowed", False)  # the opt-in is process-wide: undone after
    marker, project = tmp_path / "marker", tmp_path / "project"
    plant(tiny_model(project / "tiny"), marker)
    params = tiny_params()
    with pytest.raises(RecallError, match=r"tiny: config.json has `auto_map`.*base.trust_remote_code: true"):
        table.run(load_params(write_params(project, params)), "base")
    assert not marker.exists() and not layout.base_model(load_params(project / "params.yaml")).exists()

    params["base"]["trust_remote_code"] = True
    assert table.run(load_params(write_params(project, params)), "base").is_dir()
    assert marker.read_text() == "ran"
