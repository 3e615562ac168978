"""Faults and bad input: each case exits non-zero with one line naming the cause and leaves no output."""

import errno
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import run_cli
from safetensors.torch import load_file, save_file

from recall.atomic import MARKER
from recall.errors import RecallError
from recall.safetensors_io import SafetensorsModel
from recall.weights.features import load_features

TENSOR = "model.layers.0.self_attn.q_proj.weight"


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


# ---------------------------------------------------------------- one error boundary: every failure one line
def not_utf8(path, line: int) -> None:
    """Make `path`'s `line` (1-based) hold a Latin-1 byte, as an editor saving in the wrong encoding does."""
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1].replace(b"e", b"\xe9", 1)
    path.write_bytes(b"\n".join(lines))


def test_a_data_file_that_is_not_utf8_is_named_with_its_line(make_model, task_data, tmp_path, capsys):
    not_utf8(task_data, 3)
    column = task_data.read_bytes().split(b"\n")[2].index(b"\xe9") + 1
    out = tmp_path / "out"
    assert run_cli("finetune", "--base", make_model("a"), "--task", task_data, "--out", out) == 2
    line = error_line(capsys)
    assert line.endswith(f"{task_data}:3: not UTF-8 text (byte 0xe9 at column {column}); save the file as UTF-8")
    assert not out.exists()


def test_a_task_yaml_that_is_not_utf8_is_named_with_its_line(make_model, tmp_path, capsys):
    from test_declared_tasks import TICKETS, task_folder, ticket

    folder = task_folder(tmp_path / "data", "tickets", TICKETS, [ticket()])
    not_utf8(folder / "task.yaml", 2)
    args = ["--tasks", "tickets", "--data-dir", tmp_path / "data", "--out", tmp_path / "out"]
    assert run_cli("evaluate", "--model", make_model("a"), *args) == 2
    assert f"{folder / 'task.yaml'}:2: not UTF-8 text (byte 0xe9" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def shard(model, max_shard_bytes: int = 20_000) -> list:
    """Re-save a model folder's weights as an indexed set of shards."""
    from helpers import write_tensors

    weights = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    write_tensors(model, weights.items(), max_shard_bytes=max_shard_bytes)
    return sorted(model.glob("model-*.safetensors"))


def test_a_shard_the_index_names_but_is_missing_is_refused_before_reading(make_model, tmp_path, capsys):
    a, b = make_model("a"), make_model("b", seed=1)
    shards = shard(b)
    assert len(shards) > 2
    shards[1].unlink()
    shards[0].write_bytes(b"never read")  # the index is checked before any shard is opened
    assert run_cli("merge", "--method", "average", "--models", a, b, "--out", tmp_path / "out") == 2
    line = error_line(capsys)
    assert f"{b / 'model.safetensors.index.json'} names 1 shard(s) missing from {b}: {shards[1].name}" in line
    assert not (tmp_path / "out").exists()


def test_a_lora_adapter_on_a_base_of_other_shapes_is_refused_before_reading(make_model, tmp_path, capsys):
    from test_merge import make_adapter

    base = make_model("base")
    adapters = [make_adapter(base, tmp_path / f"lora_{i}", i)[0] for i in range(2)]
    wider = make_model("wider", hidden=64)
    args = ["--method", "average", "--models", *adapters, "--base", wider, "--out", tmp_path / "out"]
    assert run_cli("merge", *args) == 2
    line = error_line(capsys)
    assert f"{adapters[0]}: LoRA weights for " in line and "do not fit the base's [64, 64]" in line
    assert "is --base the model the adapter was trained on?" in line and not (tmp_path / "out").exists()


class FullDisk:
    """A file whose writes reach the disk until `room` bytes are written; then the system's ENOSPC."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if size > self.room:
            self.file.write(memoryview(data).cast("B")[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.file.name)
        self.room -= size
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()


def test_a_full_disk_during_a_merge_names_the_output_and_the_bytes(make_model, tmp_path, capsys, monkeypatch):
    a, b = make_model("a"), make_model("b", seed=1)
    needed = SafetensorsModel(a).nbytes
    real_open = Path.open

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        return FullDisk(file, needed // 2) if path.suffix == ".safetensors" and "w" in mode else file

    monkeypatch.setattr(Path, "open", open_on_a_full_disk)
    assert run_cli("merge", "--method", "average", "--models", a, b, "--out", tmp_path / "out") == 2
    line = error_line(capsys)
    assert f"the disk filled up while writing {tmp_path / 'out'}: it needs {needed:,} bytes and " in line
    assert "bytes are free there" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # nothing partial left


def test_an_unexpected_error_is_a_bug_with_its_traceback_in_a_file(make_model, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("planted bug")

    monkeypatch.setattr("recall.commands.merge.merge", broken)
    args = ["merge", "--method", "average", "--models", make_model("a"), make_model("b", seed=1)]
    assert run_cli(*args, "--out", tmp_path / "out") == 1
    line = error_line(capsys)
    assert line.startswith("recall merge: internal error (a bug in recall, please report it): ZeroDivisionError")
    trace = Path(line.split("full traceback in ")[1].split(" ")[0])
    assert 'raise ZeroDivisionError("planted bug")' in trace.read_text()
    trace.unlink()
    with pytest.raises(ZeroDivisionError):
        run_cli("--debug", *args, "--out", tmp_path / "out")
    monkeypatch.setenv("RECALL_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        run_cli(*args, "--out", tmp_path / "out")


# ---------------------------------------------------------------- task.yaml and task names as users write them
BOOLQ = 'format: classification\ntemplate: "{passage}\\nQuestion: {question}?\\nAnswer:"\nanswer: answer\n'
MAPPED = {"yes": "true", "no": "1.0"}


@pytest.mark.parametrize(
    ("labels", "answers", "words"),
    [
        ("[yes, no]", ["yes", "no"], {"yes": "yes", "no": "no"}),
        ("[on, off, ~]", ["on", "off", "~"], {"on": "on", "off": "off", "~": "~"}),
        ("{yes: 'true', no: 1.0}", ["yes", "no"], MAPPED),
    ],
)
def test_label_words_are_read_as_written(tmp_path, capsys, labels, answers, words):
    """YAML 1.1 reads plain yes/no/on/off/~ and 1.0 as booleans, null and numbers; label words are text."""
    from test_declared_tasks import task_folder

    rows = [{"passage": "Cats purr.", "question": f"do cats purr {i}", "answer": a} for i, a in enumerate(answers)]
    data = tmp_path / "data"
    task_folder(data, "boolq", BOOLQ + f"labels: {labels}\n", rows)
    assert run_cli("tasks", "show", "boolq", "--data-dir", data) == 0
    shown = yaml.safe_load(capsys.readouterr().out)["labels"]
    assert shown == (MAPPED if words is MAPPED else answers)
    out = tmp_path / "test.jsonl"
    assert run_cli("tasks", "export", "--task", "boolq", "--split", "test", "--data-dir", data, "--out", out) == 0
    assert [json.loads(line)["response"] for line in out.read_text().splitlines()] == [words[a] for a in answers]


def test_a_task_name_that_leaves_the_data_folder_is_refused_before_reading(make_model, tmp_path, capsys):
    from test_declared_tasks import TICKETS, task_folder, ticket

    from recall.tasks.registry import registered

    outside = task_folder(tmp_path, "outside", TICKETS, [ticket()])
    not_utf8(outside / "task.yaml", 1)  # reading it would be another error
    (tmp_path / "data").mkdir()
    for command in (["evaluate", "--model", make_model("a"), "--tasks"], ["tasks", "export", "--task"]):
        assert run_cli(*command, "../outside", "--data-dir", tmp_path / "data", "--out", tmp_path / "out") == 2
        line = error_line(capsys)
        assert "'../outside' is not a task name" in line and "letters, digits, _ and - only" in line
    assert registered("outside") is None and not (tmp_path / "out").exists()
