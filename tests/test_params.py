"""params.yaml parsed once into typed sections: unknown keys, defaults, `recall params check`. No models."""

import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SHIPPED_PARAMS

from recall.cli import main
from recall.errors import RecallError
from recall.pipeline.params import load_params
from recall.settings import Rule, Settings, at_least, setting


def write(tmp_path: Path, change=None) -> Path:
    """The repository's params.yaml with `change(params)` applied, written to tmp_path."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if change:
        change(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("section", "path"),
    [
        (None, "lr_rate"),
        ("finetune", "finetune.lr_rate"),
        ("recall", "recall.sigmaa"),
        ("evaluate", "evaluate.limt"),
        ("data", "data.sed"),
        ("multi", "multi.with_bse"),
        ("tracking", "tracking.experimnt"),
        ("base", "base.name"),
    ],
)
def test_an_unknown_key_in_any_section_fails_with_its_path(tmp_path, section, path):
    key = path.rsplit(".", 1)[-1]
    change = (lambda p: p.update({key: 1})) if section is None else (lambda p: p[section].update({key: 1}))
    with pytest.raises(RecallError, match=rf"params.yaml: {re.escape(path)}: unknown setting '{key}'"):
        load_params(write(tmp_path, change))


@pytest.mark.parametrize(
    ("method", "given", "path"),
    [
        ("ewc", {"lamda": 1000}, "methods.ewc.lamda"),
        ("ties", {"density": 0.5, "densty": 0.5}, "methods.ties.densty"),
    ],
)
def test_an_unknown_method_parameter_fails_with_its_path(tmp_path, method, given, path):
    with pytest.raises(RecallError, match=rf"{re.escape(path)}: unknown parameter .*did you mean"):
        load_params(write(tmp_path, lambda p: p["methods"].update({method: given})))


def test_a_sequence_item_and_a_type_are_named_by_their_path(tmp_path):
    with pytest.raises(RecallError, match=r"sequence\[1\]\.aftr: unknown setting"):
        load_params(write(tmp_path, lambda p: p["sequence"][1].update(aftr="x")))
    with pytest.raises(RecallError, match="finetune.lr must be a number, got '1e-3'"):  # YAML 1.1 reads 1e-3 as text
        load_params(write(tmp_path, lambda p: p["finetune"].update(lr="1e-3")))
    with pytest.raises(RecallError, match="data.train_size is missing"):
        load_params(write(tmp_path, lambda p: p["data"].pop("train_size")))


def test_omitted_keys_take_the_sections_defaults(tmp_path):
    def omit(p):
        del p["multi"], p["tracking"], p["evaluate"]["tasks"], p["evaluate"]["mode"], p["finetune"]["lora_r"]

    params = load_params(write(tmp_path, omit))
    assert params.with_base is True and params.sections.tracking.experiment == "recall"
    assert params.sections.evaluate.tasks == "all" and params.eval_modes == {}
    assert params.sections.finetune.lora_r == 8 and params.sections.finetune.epochs == 1.0
    assert params.sections.recall.samples == 64 and params.written("multi") == {}  # only what the file sets


def test_params_check_accepts_the_shipped_params(capsys):
    for path in SHIPPED_PARAMS:
        assert main(["params", "check", str(ROOT / path)]) == 0
        assert capsys.readouterr().out.strip().endswith(tuple(yaml.safe_load((ROOT / path).read_text())["methods"]))


def test_params_check_names_the_key_of_a_typo(tmp_path, capsys):
    path = write(tmp_path, lambda p: p["finetune"].update(lora_rank=4))
    assert main(["params", "check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}: finetune.lora_rank: unknown setting 'lora_rank'" in err


def test_a_settings_class_declares_its_rules_in_its_fields():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Knobs(Settings):
        size: int = setting(2, at_least(1))
        name: str = setting("a", Rule(str.isalpha, "{name} must be letters, got {value!r}"))

    assert Knobs.from_mapping({"size": 3}, "knobs") == Knobs(3)
    with pytest.raises(RecallError, match=r"knobs.size must be >= 1, got 0"):
        Knobs.from_mapping({"size": 0}, "knobs")
    with pytest.raises(RecallError, match=r"^name must be letters, got 'a1'$"):
        Knobs(name="a1").validate()
    with pytest.raises(RecallError, match=r"^size must be an integer, got True$"):
        Knobs(size=True).validate()


def test_the_evaluation_backend_is_checked_against_the_modes(tmp_path):
    params = load_params(write(tmp_path))
    assert params.sections.evaluate.backend == "hf"
    with pytest.raises(RecallError, match=r"unknown evaluate.backend 'tgi'; choose one of hf, vllm, lmdeploy"):
        load_params(write(tmp_path, lambda p: p["evaluate"].update(backend="tgi")))
    # the shipped params rank gen_sentiment's labels by likelihood, which vLLM cannot do
    with pytest.raises(RecallError, match=r"evaluate.backend: evaluation backend vllm only generates .*gen_sentiment"):
        load_params(write(tmp_path, lambda p: p["evaluate"].update(backend="vllm")))
    gen = {"backend": "vllm", "mode": {"classification": "gen", "multiple_choice": "gen"}}
    assert load_params(write(tmp_path, lambda p: p["evaluate"].update(gen))).sections.evaluate.backend == "vllm"


def test_the_registry_mode_copies_by_default_and_names_its_choices(tmp_path):
    assert load_params(write(tmp_path)).sections.tracking.registry == "copy"
    with pytest.raises(RecallError, match=r"unknown tracking.registry 'link'; choose one of copy, reference"):
        load_params(write(tmp_path, lambda p: p["tracking"].update(registry="link")))


def test_a_repeated_key_is_refused_as_dvc_would(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text() + "\nscenario: multi\n")
    with pytest.raises(RecallError, match=r"duplicate key 'scenario' \(DVC refuses the file; keep one\)"):
        load_params(path)


@pytest.mark.parametrize("task", [False, True])
def test_the_committed_json_schemas_are_current(task):
    from recall.commands.params import schema_text

    name = "task" if task else "params"
    committed = (ROOT / "schemas" / f"{name}.schema.json").read_text()
    regenerate = f"recall params schema {'--task ' * task}> schemas/{name}.schema.json"
    assert committed == schema_text(task), f"the schema changed: {regenerate}"


def test_the_shipped_params_and_task_files_validate_against_the_schemas(tmp_path):
    import json

    jsonschema = pytest.importorskip("jsonschema")
    params = jsonschema.Draft202012Validator(json.loads((ROOT / "schemas" / "params.schema.json").read_text()))
    task = jsonschema.Draft202012Validator(json.loads((ROOT / "schemas" / "task.schema.json").read_text()))
    for path in SHIPPED_PARAMS:
        assert not list(params.iter_errors(yaml.safe_load((ROOT / path).read_text()))), path
    task_files = sorted(ROOT.glob("examples/tasks/*/task.yaml")) + sorted(ROOT.glob("benchmarks/*/tasks/*/task.yaml"))
    assert task_files
    for path in task_files:
        assert not list(task.iter_errors(yaml.safe_load(path.read_text()))), path
    # what `recall params check` refuses, an editor flags as the user types
    bad = yaml.safe_load(write(tmp_path, lambda p: p["finetune"].update(lora_rank=4)).read_text())
    assert "lora_rank" in next(params.iter_errors(bad)).message
    assert list(task.iter_errors({"format": "classification", "answer": "label"}))  # no labels
    assert list(task.iter_errors({"format": "qa", "metric": "bleu"}))  # not a qa metric
