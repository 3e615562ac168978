"""Faults and bad input: each case exits non-zero with one line naming the cause and leaves no output."""

import json
import shutil
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from recall.atomic import MARKER
from recall.cli import main
from recall.errors import RecallError
from recall.merge.safetensors_io import SafetensorsModel
from recall.weights.features import load_features

TENSOR = "model.layers.0.self_attn.q_proj.weight"


def run_cli(*args):
    return main([str(a) for a in args])


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # one line, never a traceback
    return lines[0]


def poison(model, value: float, count: int = 3) -> None:
    """Put `count` entries of `value` into one tensor of a model folder."""
    weights = load_file(model / "model.safetensors")
    weights[TENSOR].view(-1)[:count] = value
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_input_stops_the_merge(make_model, tmp_path, capsys, value):
    a, b = make_model("a"), make_model("b", seed=1)
    poison(b, value)
    assert run_cli("merge", "--method", "average", "--models", a, b, "--out", tmp_path / "out") == 2
    line = error_line(capsys)
    assert f"{b}: tensor {TENSOR} holds 3 NaN/Inf values" in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_a_non_finite_base_is_named_as_the_base(make_model, tmp_path, capsys):
    base, a, b = make_model("base"), make_model("a", seed=1), make_model("b", seed=2)
    poison(base, float("nan"), count=1)
    assert (
        run_cli("merge", "--method", "task_arithmetic", "--models", a, b, "--base", base, "--out", tmp_path / "out")
        == 2
    )
    assert f"base {base}: tensor {TENSOR} holds 1 NaN/Inf values" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_merge_that_overflows_is_refused(make_model, tmp_path, capsys):
    base, a = make_model("base"), make_model("a", seed=1)
    assert (
        run_cli(
            "merge",
            "--method",
            "task_arithmetic",
            "--models",
            a,
            "--base",
            base,
            "--scale",
            1e39,
            "--out",
            tmp_path / "out",
        )
        == 2
    )
    assert "the task_arithmetic merge produced" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_non_finite_features_are_refused(tmp_path):
    features = np.zeros((4, 3, 8), dtype=np.float32)
    features[1, 2, 5] = np.nan
    np.save(tmp_path / "features.npy", features)
    with pytest.raises(RecallError, match=r"features.npy holds 1 NaN/Inf values"):
        load_features(tmp_path / "features.npy")


def rewrite_header(path, edit) -> None:
    """Apply `edit` to the parsed JSON header of a .safetensors file; keep its data bytes."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    edit(header)
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + size :])


def set_field(field, value):
    return lambda header: header[TENSOR].__setitem__(field, value)


def overlap(header):
    """Point TENSOR's bytes into another tensor's (same length, so only the overlap is wrong)."""
    mine = header[TENSOR]["data_offsets"]
    other = next(h for n, h in header.items() if n not in ("__metadata__", TENSOR) and h["data_offsets"][0] != mine[0])
    start = other["data_offsets"][0]
    header[TENSOR]["data_offsets"] = [start, start + mine[1] - mine[0]]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all"), "header is not valid JSON"),
        (lambda p: p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}"), "runs past the end of the file"),
        (lambda p: p.write_bytes(b"\x01\x02"), "shorter than the 8-byte header length"),
        (lambda p: rewrite_header(p, set_field("dtype", "F33")), f"tensor {TENSOR} has unknown dtype 'F33'"),
        (lambda p: rewrite_header(p, set_field("data_offsets", [0, 10**12])), "spans"),
        (lambda p: rewrite_header(p, set_field("shape", [-1, 32])), "has shape [-1, 32]"),
        (lambda p: rewrite_header(p, set_field("data_offsets", [64, 32])), "has data_offsets [64, 32]"),
        (lambda p: rewrite_header(p, overlap), "overlap"),
    ],
    ids=["not-json", "header-too-long", "too-short", "dtype", "byte-span", "shape", "offsets", "overlap"],
)
def test_an_unreadable_checkpoint_is_one_clear_error(make_model, tmp_path, capsys, damage, message):
    a, b = make_model("a"), make_model("b", seed=1)
    weights = b / "model.safetensors"
    damage(weights)
    assert run_cli("merge", "--method", "average", "--models", a, b, "--out", tmp_path / "out") == 2
    line = error_line(capsys)
    assert line.startswith(f"recall merge: error: {weights} ") and message in line
    assert not (tmp_path / "out").exists()


def test_outputs_never_replace_what_recall_did_not_write(make_model, tmp_path, capsys):
    a, b = make_model("a"), make_model("b", seed=1)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("precious")
    assert run_cli("merge", "--method", "average", "--models", a, b, "--out", theirs) == 2
    assert "--out" in (line := error_line(capsys)) and "recall did not write" in line and "--overwrite" in line
    assert (theirs / "notes.txt").read_text() == "precious"

    # An earlier recall output is replaced without asking; a foreign folder only with --overwrite.
    ours = tmp_path / "ours"
    for _ in range(2):
        assert run_cli("merge", "--method", "average", "--models", a, b, "--out", ours) == 0
    assert (ours / MARKER).is_file()
    assert run_cli("merge", "--method", "average", "--models", a, b, "--out", theirs, "--overwrite") == 0
    assert not (theirs / "notes.txt").exists() and (theirs / "model.safetensors").is_file()


@pytest.mark.parametrize("command", ["finetune", "evaluate", "report"])
def test_finetune_evaluate_and_report_refuse_a_foreign_out_before_any_work(
    make_model, task_data, tmp_path, capsys, command
):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("precious")
    (tmp_path / "spec.yaml").write_text("{}")  # would be refused too, but later
    model = make_model("a")
    args = {
        "finetune": ["--base", model, "--task", task_data],
        "evaluate": ["--model", model, "--tasks", "sst2"],
        "report": [tmp_path / "spec.yaml"],
    }[command]
    assert run_cli(command, *args, "--out", theirs) == 2
    assert "recall did not write" in error_line(capsys)
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]


def swap_tokens(model, first: int, second: int) -> None:
    """Same vocabulary size and shapes, different token ids: the mismatch shapes cannot see."""
    path = model / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    vocab = tokenizer["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    vocab[by_id[first]], vocab[by_id[second]] = second, first
    path.write_text(json.dumps(tokenizer))


def test_a_tokenizer_mismatch_is_refused_before_any_weight_is_read(make_model, tmp_path, capsys):
    a, b = make_model("a"), make_model("b", seed=1)
    swap_tokens(b, 100, 101)
    (b / "model.safetensors").write_bytes(b"not read")  # the check comes first
    assert run_cli("merge", "--method", "average", "--models", a, b, "--out", tmp_path / "out") == 2
    line = error_line(capsys)
    assert f"{a} and {b} have different tokenizers: token id 100" in line and "--allow-tokenizer-mismatch" in line
    assert not (tmp_path / "out").exists()


def test_different_special_tokens_are_a_mismatch_and_the_flag_allows_it(make_model, tmp_path, capsys):
    a, b = make_model("a"), make_model("b", seed=1)
    config = json.loads((b / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|endoftext|>"
    (b / "tokenizer_config.json").write_text(json.dumps(config))
    assert run_cli("merge", "--method", "average", "--models", a, b, "--out", tmp_path / "out") == 2
    assert "different special tokens: eos_token is '<|im_end|>' in the first and '<|endoftext|>'" in error_line(capsys)
    assert (
        run_cli(
            "merge", "--method", "average", "--models", a, b, "--out", tmp_path / "out", "--allow-tokenizer-mismatch"
        )
        == 0
    )
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_degenerate_requests(make_model, tmp_path, capsys):
    base, a, b = make_model("base"), make_model("a", seed=1), make_model("b", seed=2)
    out = tmp_path / "out"
    cases = [
        (["--method", "average", "--models", a], "with one model would only copy it"),
        (["--method", "ties", "--models", a, a, "--base", base], f"{a} is given twice in --models"),
        (["--method", "average", "--models", a, b, "--new", base], f"--new {base} is not one of --models"),
        (["--method", "average", "--models", a, b, "--out", a], "is one of the input models"),
    ]
    for args, message in cases:
        extra = [] if "--out" in args else ["--out", out]
        assert run_cli("merge", *args, *extra) == 2
        assert message in error_line(capsys)
    assert not out.exists()
    # One model with a base is meaningful for task-vector methods: its task vector, scaled.
    assert (
        run_cli("merge", "--method", "task_arithmetic", "--models", a, "--base", base, "--scale", 0.5, "--out", out)
        == 0
    )
    merged, theta0, theta = (SafetensorsModel(m).read(TENSOR) for m in (out, base, a))
    torch.testing.assert_close(merged, theta0 + 0.5 * (theta - theta0))


def test_an_identical_copy_is_not_the_same_model_twice(make_model, tmp_path):
    a = make_model("a")
    twin = shutil.copytree(a, tmp_path / "twin")
    assert run_cli("merge", "--method", "average", "--models", a, twin, "--out", tmp_path / "out") == 0


def test_weights_only_folders_are_merged_without_a_tokenizer_check(make_model, tmp_path, caplog):
    a, b = make_model("a"), make_model("b", seed=1)
    for model in (a, b):
        for file in model.glob("tokenizer*"):
            file.unlink()
    assert run_cli("merge", "--method", "average", "--models", a, b, "--out", tmp_path / "out") == 0
    assert "not comparing tokenizers" in caplog.text
