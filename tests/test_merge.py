"""The streaming merge engine, `average` and `recall` methods, LoRA inputs, and the CLI."""

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import run_cli, write_tensors
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from test_core import independent_representations
from transformers import AutoModelForCausalLM, AutoTokenizer

from recall.data import read_examples, render
from recall.safetensors_io import SafetensorsModel


def tensors(path):
    model = SafetensorsModel(path)
    return {name: model.read(name).float() for name in model.tensors}


def test_writer_round_trips_through_safetensors(tmp_path):
    state = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64),
        "d": torch.randn(40, 40, dtype=torch.float16),
    }
    write_tensors(tmp_path / "one", state.items())
    write_tensors(tmp_path / "many", state.items(), max_shard_bytes=64)
    loaded = load_file(tmp_path / "one" / "model.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    # a (60 B) | b (14 B) + c (48 B) | d (3200 B, alone though over the limit)
    assert [index["weight_map"][k][:11] for k in "abcd"] == ["model-00001", "model-00002", "model-00002", "model-00003"]
    sharded = SafetensorsModel(tmp_path / "many")
    assert all(torch.equal(sharded.read(k), v) for k, v in state.items())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_average_is_the_weighted_sum(make_model, tmp_path, family):
    a, b, c = (make_model(n, family=family, seed=s) for n, s in [("a", 1), ("b", 2), ("c", 3)])
    assert (
        run_cli(
            "merge", "--method", "average", "--models", a, b, c, "--weights", 0.2, 0.3, 0.5, "--out", tmp_path / "out"
        )
        == 0
    )
    ta, tb, tc, out = tensors(a), tensors(b), tensors(c), tensors(tmp_path / "out")
    assert out.keys() == ta.keys()
    for name in out:
        torch.testing.assert_close(out[name], 0.2 * ta[name] + 0.3 * tb[name] + 0.5 * tc[name], rtol=1e-5, atol=1e-6)
    record = json.loads((tmp_path / "out" / "merge_weights.json").read_text())
    assert record["method"] == "average" and record["models"] == [str(a), str(b), str(c)]
    assert len(record["layers"]) == 3 and all(r == [0.2, 0.3, 0.5] for r in record["layers"])
    assert (tmp_path / "out" / "merge_weights.png").stat().st_size > 1000


def test_merging_identical_models_returns_them(make_model, tmp_path, task_data):
    a = make_model("a")
    twin = shutil.copytree(a, tmp_path / "twin")  # the same folder twice is refused (test_faults.py)
    for method, extra in [("average", []), ("recall", ["--data", task_data, "--typical", 3])]:
        out = tmp_path / method
        assert run_cli("merge", "--method", method, "--models", a, twin, "--out", out, *extra) == 0
        ta, to = tensors(a), tensors(out)
        for name in ta:
            torch.testing.assert_close(to[name], ta[name], rtol=1e-6, atol=1e-7)
    record = json.loads((tmp_path / "recall" / "merge_weights.json").read_text())
    np.testing.assert_allclose(record["layers"], 0.5)  # identical representations: uniform weights


def test_recall_weights_match_the_paper_exactly(make_model, tmp_path, task_data):
    """Every sample typical (m >= n): weights equal eq. 1 + eq. 4 computed independently."""
    models = [make_model(n, seed=s) for n, s in [("base", 0), ("expert", 1), ("new", 2)]]
    out = tmp_path / "out"
    assert (
        run_cli(
            "merge",
            "--method",
            "recall",
            "--models",
            *models,
            "--data",
            task_data,
            "--typical",
            100,
            "--sigma",
            1.0,
            "--out",
            out,
        )
        == 0
    )
    record = json.loads((out / "merge_weights.json").read_text())
    assert record["references"][0]["typical"] == list(range(14))

    tok = AutoTokenizer.from_pretrained(models[-1])
    texts = [render(tok, r) for r in read_examples(task_data)]
    reps = [independent_representations(m, texts) for m in models]  # (n, L+1, E) each
    new = reps[-1]
    sim = np.array([[np.mean(np.exp(-((new[:, i] - r[:, i]) ** 2).sum(-1) / 2)) for r in reps] for i in range(3)])
    expected = np.exp(sim) / np.exp(sim).sum(1, keepdims=True)
    np.testing.assert_allclose(record["layers"], expected, rtol=1e-4)
    np.testing.assert_allclose(np.sum(record["layers"], axis=1), 1.0)

    # Every tensor of layer group i is the weighted sum with row i.
    inputs, merged = [tensors(m) for m in models], tensors(out)
    groups = record["tensor_groups"]
    assert set(groups) == set(merged)
    for name, value in merged.items():
        w = record["layers"][groups[name]]
        torch.testing.assert_close(value, sum(wq * t[name] for wq, t in zip(w, inputs)), rtol=1e-5, atol=1e-6)

    # The merged model loads and generates.
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    gen = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] > ids.shape[1]
    assert "recall" in (out / "README.md").read_text()


def test_multi_expert_mode_averages_reference_rows(make_model, tmp_path, task_data):
    """Each expert's data gives its own similarity row per layer (eq. 1, every sample typical); the
    weights are the mean of their softmaxes, recomputed here from the models' own hidden states."""
    base, e1, e2 = (make_model(n, seed=s) for n, s in [("base", 0), ("e1", 1), ("e2", 2)])
    data_e2 = tmp_path / "e2.jsonl"
    data_e2.write_text("".join(task_data.read_text().splitlines(keepends=True)[3:]))  # other data for e2
    out = tmp_path / "out"
    args = ["--models", base, e1, e2, "--experts", e1, e2, "--data", task_data, data_e2, "--typical", 100]
    assert run_cli("merge", "--method", "recall", *args, "--sigma", 1.0, "--out", out) == 0
    record = json.loads((out / "merge_weights.json").read_text())
    assert [r["reference"] for r in record["references"]] == [str(e1), str(e2)]

    tok = AutoTokenizer.from_pretrained(e1)
    rows = []
    for reference, data in [(e1, task_data), (e2, data_e2)]:
        texts = [render(tok, r) for r in read_examples(data)]
        ref, *reps = (independent_representations(m, texts) for m in (reference, base, e1, e2))
        sim = np.array([[np.mean(np.exp(-((ref[:, i] - r[:, i]) ** 2).sum(-1) / 2)) for r in reps] for i in range(3)])
        rows.append(np.exp(sim) / np.exp(sim).sum(1, keepdims=True))
    assert not np.allclose(rows[0], rows[1], atol=1e-3)  # the two references disagree: the mean is not either row
    np.testing.assert_allclose(record["layers"], np.mean(rows, axis=0), rtol=1e-4)


def test_recall_with_median_sigma_and_unit_states_records_its_kernel(make_model, tmp_path, task_data):
    models = [make_model("old", seed=1), make_model("new", seed=2)]
    out = tmp_path / "out"
    assert (
        run_cli(
            "merge",
            "--method",
            "recall",
            "--models",
            *models,
            "--data",
            task_data,
            "--typical",
            100,
            "--sigma",
            "median",
            "--normalize-states",
            "unit",
            "--out",
            out,
        )
        == 0
    )
    record = json.loads((out / "merge_weights.json").read_text())
    assert record["settings"]["sigma"] == "median" and record["settings"]["normalize"] == "unit"

    tok = AutoTokenizer.from_pretrained(models[-1])
    texts = [render(tok, r) for r in read_examples(task_data)]
    reps = np.stack([independent_representations(m, texts) for m in models])  # (2, n, L+1, E)
    reps /= np.linalg.norm(reps, axis=-1, keepdims=True)
    pooled = reps.transpose(2, 0, 1, 3).reshape(3, -1, reps.shape[-1])  # per layer, both models' states
    sigmas = [np.median([np.linalg.norm(a - b) for k, a in enumerate(p) for b in p[k + 1 :]]) for p in pooled]
    reference = record["references"][0]
    np.testing.assert_allclose(reference["sigmas"], sigmas, rtol=1e-4)
    sim = np.array(
        [
            [np.mean(np.exp(-((reps[1][:, i] - r[:, i]) ** 2).sum(-1) / (2 * sigmas[i] ** 2))) for r in reps]
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(reference["similarity"], sim, rtol=1e-3)
    assert all(0 < row[0] < 1 for row in reference["similarity"])  # not saturated at any layer
    np.testing.assert_allclose(record["layers"], np.exp(sim) / np.exp(sim).sum(1, keepdims=True), rtol=1e-3)


def make_adapter(base_path, out, seed):
    """A LoRA adapter with random (non-zero) B, saved with peft."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    peft_model.save_pretrained(out)
    return out, peft_model.merge_and_unload().state_dict()


def test_lora_adapters_merge_in_delta_space(make_model, tmp_path):
    base = make_model("base")
    (a, merged_a), (b, merged_b) = (
        make_adapter(base, tmp_path / "lora_a", 1),
        make_adapter(base, tmp_path / "lora_b", 2),
    )
    out = tmp_path / "out"
    assert (
        run_cli("merge", "--method", "average", "--models", a, b, "--base", base, "--weights", 0.25, 0.75, "--out", out)
        == 0
    )
    theta0, merged = tensors(base), tensors(out)
    changed = 0
    for name, value in merged.items():
        expected = theta0[name] + 0.25 * (merged_a[name] - theta0[name]) + 0.75 * (merged_b[name] - theta0[name])
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
        changed += not torch.equal(value, theta0[name])
    assert changed == 2 * 3  # q_proj, v_proj, down_proj in both layers
    assert AutoModelForCausalLM.from_pretrained(out) is not None


def test_incompatible_models_fail_before_reading_weights(make_model, tmp_path, capsys):
    a, b = make_model("a"), make_model("b", hidden=64)
    (b / "model.safetensors").write_bytes(b"not a safetensors file")  # would fail if it were read
    assert run_cli("merge", "--method", "average", "--models", a, b, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "hidden_size=64" in err and str(b) in err
    assert not (tmp_path / "out").exists()


def test_a_truncated_checkpoint_is_a_clear_error_not_a_crash(make_model, tmp_path, capsys):
    """Inputs are memory-mapped, and touching a mapped page past the end of a file kills the process."""
    a, b = make_model("a"), make_model("b", seed=1)
    weights = b / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert run_cli("merge", "--method", "average", "--models", a, b, "--out", tmp_path / "out") == 2
    assert f"{weights} is truncated" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "recall", "--similarity", "l2"], "unknown similarity 'l2'"),
        (["--method", "recall", "--sigma", "-1"], "sigma must be > 0 or 'median'"),
        (["--method", "recall", "--sigma", "mean"], "sigma must be > 0 or 'median' (the per-layer median heuristic)"),
        (["--method", "recall", "--normalize-states", "l2"], "normalize must be one of none, unit, sqrt_dim, got 'l2'"),
        (
            ["--method", "average", "--normalize-states", "unit"],
            "--normalize-states does not apply to --method average",
        ),
        (["--method", "recall", "--typical", "0"], "typical must be >= 1"),
        (["--method", "average", "--weights", "1"], "--weights has 1 values for 2 models"),
        (["--method", "recall", "--new", "elsewhere"], "--new elsewhere is not one of --models"),
    ],
)
def test_bad_arguments_are_clear_errors(make_model, tmp_path, task_data, capsys, args, message):
    a, b = make_model("a"), make_model("b", seed=1)
    data = ["--data", task_data] if "recall" in args else []
    assert run_cli("merge", "--models", a, b, *data, "--out", tmp_path / "out", *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
