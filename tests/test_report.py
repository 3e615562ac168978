"""`recall report` on metrics files holding the paper's own numbers: the tables must reproduce the
paper's averages, the plots must be real PNGs, and bad specs must fail with a clear message."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from recall.atomic import MARKER
from recall.cli import main
from recall.errors import RecallError
from recall.reporting.plots import plot_merge_weights
from recall.reporting.report import short_names, write_report

TASKS = ["sst2", "squad_v2", "iwslt2017_en_fr", "race", "medmcqa"]  # table 1 column order
SEQUENCE = ["sst2", "squad_v2", "medmcqa", "iwslt2017_en_fr", "race"]  # table 7 order

TABLE1 = {  # fine-tuned on -> method -> scores in TASKS order
    "sst2": {"SFT only": [95.76, 31.68, 13.28, 44.71, 32.32], "RECALL": [94.50, 30.72, 12.08, 47.44, 34.90]},
    "squad_v2": {"SFT only": [86.81, 85.46, 21.28, 48.78, 32.61], "RECALL": [86.19, 84.87, 18.20, 49.50, 34.34]},
}
TABLE2 = {"base model": [87.96, 0.94, 9.64, 50.14, 35.91], "RECALL": [89.11, 77.66, 33.12, 74.39, 39.86]}
TABLE7 = {  # method -> rows in SEQUENCE order
    "LoRA SFT": [
        [95.76, 31.68, 32.32, 13.28, 44.71],
        [94.38, 87.42, 16.88, 25.06, 58.15],
        [88.3, 74.89, 42.62, 19.29, 68.38],
    ],
    "RECALL": [
        [94.5, 30.72, 34.9, 12.08, 47.44],
        [96.61, 86.34, 30.79, 19.83, 57.52],
        [92.89, 71.66, 40.65, 18.48, 69.06],
    ],
}


def write_metrics(path: Path, tasks: list[str], scores: list[float]) -> str:
    """Write a metrics.json (translation's primary metric is BLEU); return its path relative to the spec."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = {t: {"accuracy": s} for t, s in zip(tasks, scores)}
    metrics["iwslt2017_en_fr"] = {"bleu": metrics["iwslt2017_en_fr"]["accuracy"], "exact_match": 0.0}
    path.write_text(json.dumps(metrics))
    return str(path.relative_to(path.parents[3]))


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    """A spec with every section, its files laid out as runs/<name>/eval/metrics.json."""
    runs = tmp_path / "runs"
    single = [
        {
            "finetuned_on": task,
            "method": method,
            "metrics": write_metrics(runs / f"{task}-{method}" / "eval" / "metrics.json", TASKS, s),
        }
        for task, methods in TABLE1.items()
        for method, s in methods.items()
    ]
    multi = [
        {
            "method": "base model",
            "metrics": write_metrics(runs / "base" / "eval" / "metrics.json", TASKS, TABLE2["base model"]),
        },
        {
            "setting": "without base model",
            "method": "RECALL",
            "metrics": write_metrics(runs / "multi" / "eval" / "metrics.json", TASKS, TABLE2["RECALL"]),
        },
    ]
    sequential = [
        {
            "method": method,
            "steps": [
                {
                    "task": SEQUENCE[t],
                    "metrics": write_metrics(runs / f"{method}-{t}" / "eval" / "metrics.json", SEQUENCE, row),
                }
                for t, row in enumerate(rows)
            ],
        }
        for method, rows in TABLE7.items()
    ]
    (runs / "merge_weights.json").write_text(
        json.dumps(
            {
                "method": "recall",
                "models": ["models/base", "runs/sst2/model", "runs/race/model"],
                "layers": [[0.5, 0.3, 0.2], [0.4, 0.35, 0.25], [0.3, 0.4, 0.3]],
                "tensor_groups": {},
            }
        )
    )
    (runs / "similarity.json").write_text(
        json.dumps(
            {
                "metric": "rbf",
                "models": ["runs/sst2/model", "runs/race/model"],
                "layers": [[1.0, 1.0], [0.9, 0.8], [0.7, 0.5]],
            }
        )
    )
    path = tmp_path / "report.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "tasks": TASKS,
                "single": single,
                "multi": multi,
                "sequential": sequential,
                "merge_weights": ["runs/merge_weights.json"],
                "similarity": ["runs/similarity.json"],
            },
            sort_keys=False,
        )
    )
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_tables_reproduce_the_paper(spec: Path, tmp_path: Path):
    out = tmp_path / "report"
    report = write_report(spec, out)

    table1 = read_csv(out / "table1.csv")
    assert [(r["Fine-tuned on"], r["Method"]) for r in table1] == [
        ("sst2", "SFT only"),
        ("sst2", "RECALL"),
        ("squad_v2", "SFT only"),
        ("squad_v2", "RECALL"),
        ("All Average", "SFT only"),
        ("All Average", "RECALL"),
    ]
    # printed in table 1: 43.55 / 30.50 (SST-2, SFT only), 43.93 / 31.29 (SST-2, RECALL) and
    # 55.00 / 47.37 (SQuAD, SFT only): the paper averaged unrounded scores, its rounded ones give 54.99
    assert [round(float(table1[i]["Avg from all tasks"]), 2) for i in (0, 1, 2)] == [43.55, 43.93, 54.99]
    assert [round(float(table1[i]["Avg from unseen tasks"]), 2) for i in (0, 1, 2)] == [30.5, 31.29, 47.37]
    assert float(table1[4]["sst2"]) == pytest.approx((95.76 + 86.81) / 2)

    table2 = read_csv(out / "table2.csv")
    assert [round(float(r["Average"]), 3) for r in table2] == [36.918, 62.828]  # as printed in table 2
    assert table2[1]["Setting"] == "without base model"

    table7 = read_csv(out / "table7.csv")
    assert list(table7[0])[3:8] == SEQUENCE  # columns follow the sequence
    assert [round(float(r["Average"]), 3) for r in table7] == [43.55, 56.378, 58.696, 43.928, 58.218, 58.548]
    assert [r["Step"] for r in table7[:3]] == ["Task 1", "Task 2", "Task 3"]

    continual = {r["Method"]: r for r in read_csv(out / "continual.csv")}
    # LoRA SFT after 3 steps: BWT = ((88.3-95.76) + (74.89-87.42)) / 2 ; forgetting = 95.76-88.3, 87.42-74.89
    assert float(continual["LoRA SFT"]["BWT"]) == pytest.approx(-9.995)
    assert float(continual["LoRA SFT"]["Forgetting sst2"]) == pytest.approx(7.46)
    assert float(continual["LoRA SFT"]["Forgetting squad_v2"]) == pytest.approx(12.53)
    # RECALL's SST-2 score peaked after step 2 (96.61), not right after step 1
    assert float(continual["RECALL"]["Forgetting sst2"]) == pytest.approx(96.61 - 92.89)

    # the same numbers as DVC metrics: {table: {row label: {column: value}}}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["continual"]["LoRA SFT"]["BWT"] == pytest.approx(-9.995)
    assert metrics["table1"]["sst2/RECALL"]["Avg from all tasks"] == pytest.approx(43.93, abs=0.01)
    assert metrics["table7"]["RECALL/Task 2/squad_v2"]["Average"] == pytest.approx(58.218, abs=1e-3)
    assert "Method" not in metrics["continual"]["RECALL"]  # text cells label the row; they are not metrics
    # no examples/ beside these metrics files: estimates and differences, but no intervals
    assert metrics["single"]["n_test"] == {t: None for t in TASKS}
    assert metrics["single"]["sst2/RECALL"]["avg_ci95"] is None
    assert metrics["single"]["sst2/RECALL"]["diff_vs_sft"]["avg"] == [None, pytest.approx(43.928 - 43.55), None]
    assert metrics["sequential"]["RECALL"]["bwt"] == pytest.approx(((92.89 - 94.5) + (71.66 - 86.34)) / 2)
    assert "diff_vs_sft" not in metrics["sequential"]["RECALL"]  # no method is named sft there

    text = report.read_text()
    for heading in (
        "Table 1",
        "Table 2",
        "Table 7",
        "Continual-learning metrics",
        "BWT =",
        "Table 1 with 95% intervals",
    ):
        assert heading in text
    assert "| sst2 | RECALL | 43.93 [n/a] | 31.28 [n/a] | +0.38 [n/a] |" in text  # "SFT only" is the sft reference
    assert "n/a: no per-example results" in text
    assert "| sst2 | SFT only | 95.76 | 31.68 | 13.28 | 44.71 | 32.32 | 43.55 | 30.50 |" in text
    for png in ("forgetting.png", "merge_weights_1.png", "similarity_1.png"):
        assert f"]({png})" in text
        image = matplotlib.image.imread(out / png)  # a decodable PNG of a sensible size
        assert image.shape[0] > 200 and image.shape[1] > 300


def test_cli_prints_the_report(spec: Path, tmp_path: Path, capsys):
    assert main(["report", str(spec), "--out", str(tmp_path / "r")]) == 0
    assert "Table 7" in capsys.readouterr().out


def test_sections_are_optional(tmp_path: Path):
    relative = write_metrics(tmp_path / "runs" / "m" / "eval" / "metrics.json", TASKS, TABLE2["RECALL"])
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"multi": [{"method": "RECALL", "metrics": relative}]}))
    write_report(spec, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        MARKER,
        "metrics.json",
        "report.md",
        "table2.csv",
        "table2_ci.csv",
    ]
    assert list(read_csv(tmp_path / "out" / "table2.csv")[0])[2:7] == TASKS  # default: the file's task order


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update(extra=[]), "unknown section"),
        (lambda s: s.update(tasks=TASKS + ["gen_sentiment"]), "no score for task 'gen_sentiment'"),
        (lambda s: s["single"][0].pop("method"), "entry 1 of `single` lacks `method`"),
        (lambda s: s["single"][0].update(finetuned_on="sst-2"), "finetuned_on 'sst-2' is not one of the tasks"),
        (lambda s: s["multi"][0].update(metrics="nowhere/metrics.json"), "does not exist"),
        (lambda s: s["sequential"][1]["steps"].reverse(), "compare methods over one task order"),
        (lambda s: s["sequential"][0].update(steps=[]), "'LoRA SFT' needs a list of steps"),
        (lambda s: s["sequential"][0]["steps"][1].pop("task"), "step 2 of 'LoRA SFT' needs `task` and `metrics`"),
        (lambda s: s.update(similarity=[{"path": "runs/similarity.json"}]), "`similarity` must list names or paths"),
        (lambda s: s.update(multi={"method": "m"}), "`multi` must be a list"),
        (
            lambda s: s.update(merge_weights=["runs/similarity.json", "runs/nothing.json"]),
            "nothing.json .* does not exist",
        ),
        (lambda s: {k: s.pop(k) for k in list(s) if k != "tasks"}, "nothing to report"),
        (lambda s: s.update(bootstrap={"replicates": 0}), "bootstrap replicates must be a positive integer"),
        (lambda s: s.update(bootstrap={"resamples": 100}), "`bootstrap` takes `replicates` and `seed`"),
    ],
)
def test_bad_specs_fail_clearly_and_write_nothing(spec: Path, tmp_path: Path, change, message):
    data = yaml.safe_load(spec.read_text())
    change(data)
    spec.write_text(yaml.safe_dump(data))
    with pytest.raises(RecallError, match=message):
        write_report(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_plots_alone(spec: Path, tmp_path: Path):
    data = yaml.safe_load(spec.read_text())
    spec.write_text(yaml.safe_dump({"merge_weights": data["merge_weights"], "similarity": data["similarity"]}))
    write_report(spec, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        MARKER,
        "merge_weights_1.png",
        "metrics.json",
        "report.md",
        "similarity_1.png",
    ]


def test_bad_metrics_file(tmp_path: Path):
    (tmp_path / "metrics.json").write_text(json.dumps({"sst2": 91.0}))
    spec = tmp_path / "spec.yaml"
    spec.write_text("multi: [{method: m, metrics: metrics.json}]\n")
    with pytest.raises(RecallError, match="is not a metrics.json"):
        write_report(spec, tmp_path / "out")


def test_merge_weights_rows_must_match_models(tmp_path: Path):
    with pytest.raises(RecallError, match="layer 1 has 1 values for 2 models"):
        plot_merge_weights([[0.5, 0.5], [1.0]], ["a", "b"], tmp_path / "w.png")


def test_short_names_tell_models_apart():
    assert short_names(["runs/sst2/model", "runs/race/model", "models/base"]) == [
        "sst2/model",
        "race/model",
        "models/base",
    ]
    assert short_names(["a/x", "b/y"]) == ["x", "y"]


# Evidence: synthetic evaluations with per-example records (examples/<task>.jsonl) for registered
# accuracy tasks, each scored on the same n examples.
EVIDENCE_TASKS = ["gen_sentiment", "gen_knowledge"]


def flags(n: int, right: int, seed: int = 0) -> list[bool]:
    """n examples of which `right` are correct, shuffled."""
    ok = [i < right for i in range(n)]
    random.Random(seed).shuffle(ok)
    return ok


def write_eval(folder: Path, results: dict[str, list[bool]], examples: bool = True) -> str:
    """An evaluation folder: metrics.json (accuracy first, then nll) and, unless `examples` is False,
    examples/<task>.jsonl; returns the metrics path relative to the spec (two folders up)."""
    folder.mkdir(parents=True)
    metrics = {task: {"accuracy": 100 * sum(ok) / len(ok), "nll": 0.5} for task, ok in results.items()}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if examples:
        (folder / "examples").mkdir()
        for task, ok in results.items():
            lines = [
                {"index": i, "score": 100.0 * right, "nll": 0.5, "prediction": "p", "reference": f"{task} {i}"}
                for i, right in enumerate(ok)
            ]
            (folder / "examples" / f"{task}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str((folder / "metrics.json").relative_to(folder.parents[1]))


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_intervals_decide_which_differences_count(tmp_path: Path):
    low, high = flags(200, 20), flags(200, 180)
    nudged = list(low)
    nudged[low.index(False)] = True  # one example of 200 more correct
    results = {
        "sft": {"gen_sentiment": low, "gen_knowledge": low},
        "recall": {"gen_sentiment": high, "gen_knowledge": high},
        "copy": {"gen_sentiment": low, "gen_knowledge": low},
        "nudge": {"gen_sentiment": nudged, "gen_knowledge": low},
    }
    single = [
        {"finetuned_on": "gen_sentiment", "method": m, "metrics": write_eval(tmp_path / "runs" / m, r)}
        for m, r in results.items()
    ]
    spec = write_spec(tmp_path / "spec.yaml", {"tasks": EVIDENCE_TASKS, "single": single})
    out = tmp_path / "out"
    text = write_report(spec, out).read_text()

    rows = {r["Method"]: r for r in read_csv(out / "table1_ci.csv")}
    assert rows["recall"]["Δ Avg vs sft"].endswith(" *")  # 90% vs 10% correct
    assert rows["copy"]["Δ Avg vs sft"] == "+0.00 [+0.00, +0.00] no difference"  # identical results
    assert rows["nudge"]["Δ Avg vs sft"].endswith("no difference")  # one example of 200
    assert rows["sft"]["Δ Avg vs sft"] == "" and rows["sft"]["Best other"] == "recall"
    assert rows["recall"]["Best other"] == "nudge"  # the highest average of the others
    assert "n = 200 test examples scored per task" in text
    assert "* : 95% paired-bootstrap interval excludes 0; otherwise no difference" in text

    metrics = json.loads((out / "metrics.json").read_text())
    single = metrics["single"]
    assert single["n_test"] == {"gen_sentiment": 200, "gen_knowledge": 200}
    recall = single["gen_sentiment/recall"]
    assert recall["avg"] == 90.0 and recall["avg_ci95"][0] < 90.0 < recall["avg_ci95"][1]
    low_diff, estimate, high_diff = recall["diff_vs_sft"]["avg"]
    assert 0 < low_diff < estimate == 80.0 < high_diff
    assert single["gen_sentiment/copy"]["diff_vs_sft"] == {"avg": [0.0, 0.0, 0.0], "unseen_avg": [0.0, 0.0, 0.0]}
    nudge = single["gen_sentiment/nudge"]["diff_vs_sft"]["avg"]
    assert nudge[0] <= 0 <= nudge[2] and nudge[1] == 0.25  # half a point on one of two tasks
    assert "diff_vs_sft" not in single["gen_sentiment/sft"]
    assert metrics["table1"]["gen_sentiment/recall"]["Avg from all tasks"] == 90.0  # the paper tables stay


def test_sequential_bwt_interval(tmp_path: Path):
    # sft forgets gen_sentiment (80% -> 40%); recall keeps it (80% -> 78%); both learn gen_knowledge
    after = {"sft": [flags(100, 80, 1), flags(100, 40, 1)], "recall": [flags(100, 80, 1), flags(100, 78, 1)]}
    knowledge = [flags(100, 25, 2), flags(100, 70, 3)]
    sequential = [
        {
            "method": m,
            "steps": [
                {
                    "task": task,
                    "metrics": write_eval(
                        tmp_path / "runs" / f"{m}{t}", {"gen_sentiment": after[m][t], "gen_knowledge": knowledge[t]}
                    ),
                }
                for t, task in enumerate(EVIDENCE_TASKS)
            ],
        }
        for m in after
    ]
    spec = write_spec(tmp_path / "spec.yaml", {"sequential": sequential, "bootstrap": {"replicates": 200, "seed": 1}})
    text = write_report(spec, tmp_path / "out").read_text()
    seq = json.loads((tmp_path / "out" / "metrics.json").read_text())["sequential"]
    assert seq["n_test"] == {"gen_sentiment": 100, "gen_knowledge": 100}
    assert seq["sft"]["bwt"] == -40.0  # by hand: R[1][0] - R[0][0] = 40 - 80
    assert seq["sft"]["bwt_ci95"][0] < -40.0 < seq["sft"]["bwt_ci95"][1] < 0
    assert seq["recall"]["avg"] == (78 + 70) / 2
    assert seq["recall"]["diff_vs_sft"]["bwt"][1] == 38.0 and seq["recall"]["diff_vs_sft"]["bwt"][0] > 0
    assert "| recall | 74.00 [" in text and "200 resamples of the test examples (seed 1)" in text
    write_report(spec, tmp_path / "again")  # deterministic by seed
    assert (tmp_path / "again" / "metrics.json").read_text() == (tmp_path / "out" / "metrics.json").read_text()


def test_a_sequence_scored_on_new_tasks_only(tmp_path: Path):
    """`evaluate.tasks: new`: a middle step scores only the task it learned, the last step every task.
    BWT and the final average need nothing more; a row's average over fewer tasks is left empty."""
    first = {"gen_sentiment": flags(100, 80, 1)}
    middle = {"gen_squad": flags(100, 40, 2)}
    last = {"gen_sentiment": flags(100, 50, 1), "gen_squad": flags(100, 30, 2), "gen_knowledge": flags(100, 70, 3)}
    steps = [
        {"task": t, "metrics": write_eval(tmp_path / "runs" / f"s{i}", scores)}
        for i, (t, scores) in enumerate([("gen_sentiment", first), ("gen_squad", middle), ("gen_knowledge", last)])
    ]
    spec = write_spec(tmp_path / "spec.yaml", {"sequential": [{"method": "sft", "steps": steps}]})
    write_report(spec, tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "table7.csv")
    assert rows[1]["gen_sentiment"] == "" and rows[1]["gen_squad"] == "40.0" and rows[1]["Average"] == ""
    assert rows[2]["Average"] == "50.0"
    seq = json.loads((tmp_path / "out" / "metrics.json").read_text())["sequential"]
    assert seq["sft"]["bwt"] == -20.0 and seq["sft"]["avg"] == 50.0  # mean of (50 - 80, 30 - 40)
    # a middle step missing the task it learned, or a last step missing any task, names its file
    for i, scores in [(1, {"gen_sentiment": flags(100, 80, 1)}), (2, {**last, "gen_knowledge": None})]:
        bad = [dict(s) for s in steps]
        bad[i]["metrics"] = write_eval(tmp_path / "runs" / f"short{i}", {k: v for k, v in scores.items() if v})
        with pytest.raises(RecallError, match=f"short{i}"):
            write_report(
                write_spec(tmp_path / f"bad{i}.yaml", {"sequential": [{"method": "sft", "steps": bad}]}),
                tmp_path / f"bad{i}",
            )


def test_evaluations_without_examples_have_no_intervals(tmp_path: Path):
    ok = {"gen_sentiment": flags(50, 30), "gen_knowledge": flags(50, 20)}
    multi = [
        {"method": "sft", "metrics": write_eval(tmp_path / "runs" / "old", ok, examples=False)},
        {"method": "recall", "metrics": write_eval(tmp_path / "runs" / "new", ok)},
    ]
    out = tmp_path / "out"
    text = write_report(write_spec(tmp_path / "spec.yaml", {"multi": multi}), out).read_text()
    multi_metrics = json.loads((out / "metrics.json").read_text())["multi"]
    assert multi_metrics["sft"]["avg_ci95"] is None and multi_metrics["recall"]["avg_ci95"] is not None
    assert multi_metrics["recall"]["diff_vs_sft"] == {"avg": [None, 0.0, None]}
    assert "| recall | 50.00 [" in text and "+0.00 [n/a]" in text
    assert "n = 50 test examples scored per task" in text


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda e: e.write_text(e.read_text().replace('"score": 0.0', '"score": 100.0')),
            "are not from that evaluation",
        ),
        (
            lambda e: e.write_text(e.read_text().replace("gen_sentiment 3", "gen_sentiment 4")),
            "not the same test examples",
        ),
        (lambda e: e.write_text(e.read_text() + "{oops\n"), ":21: not valid JSON"),
    ],
)
def test_inconsistent_examples_fail_clearly(tmp_path: Path, damage, message):
    ok = {"gen_sentiment": flags(20, 10)}
    multi = [{"method": m, "metrics": write_eval(tmp_path / "runs" / m, ok)} for m in ("a", "b")]
    damage(tmp_path / "runs" / "b" / "examples" / "gen_sentiment.jsonl")
    with pytest.raises(RecallError, match=message):
        write_report(write_spec(tmp_path / "spec.yaml", {"multi": multi}), tmp_path / "out")


def test_a_report_on_declared_tasks_is_given_their_folder(tmp_path: Path, capsys):
    """The report recomputes each task's metric per resample, so it must know the task: a declared one
    comes from --data-dir, as for `recall evaluate`."""
    tasks = Path(__file__).resolve().parents[1] / "examples" / "tasks"
    multi = [
        {"method": m, "metrics": write_eval(tmp_path / "runs" / m, {"tickets": flags(30, right)})}
        for m, right in [("sft", 10), ("recall", 20)]
    ]
    spec = write_spec(tmp_path / "spec.yaml", {"multi": multi})
    assert main(["report", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "unknown task 'tickets'" in capsys.readouterr().err
    assert main(["report", str(spec), "--out", str(tmp_path / "out"), "--data-dir", str(tasks)]) == 0
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())["multi"]
    assert report["recall"]["avg"] == pytest.approx(200 / 3, abs=1e-3) and report["sft"]["avg"] == pytest.approx(
        100 / 3, abs=1e-3
    )
