"""Quality benchmark: the paper's experiments, small, on the real task data with SmolLM2-135M-Instruct.

Scenarios (RECALL, arXiv 2510.20479, sections 4.1-4.3):

    single      table 1: each task's LoRA expert merged with the base (average, DARE+average,
                LM-Cocktail, RECALL) and the expert alone ("SFT only"); scored on all five tasks
    multi       table 2: the five experts merged with and without the base (average, DARE+average,
                task arithmetic, TIES, RECALL in multi-expert mode)
    sequential  table 7 / figure 5: LoRA SFT chain, EWC chain, RECALL chain over
                SST-2 -> SQuAD2.0 -> MedMCQA -> IWSLT2017 -> RACE; accuracy matrix, BWT, forgetting
    ablation    appendix F: table 1's RECALL merges with a lower temperature or cosine similarity

    .venv/bin/python benchmarks/quality.py --scenarios single multi sequential ablation \
        --work data/quality --out benchmarks/results [--steps 24 --batch 4 --max-length 384 ...]

Every model and evaluation lands under --work and is skipped when it already exists (the library
writes all of them atomically, so existence means complete): a killed run resumes. Results:
OUT/quality.json (updated after each scenario), OUT/quality.md and OUT/quality_report/ (tables and
plots from `recall.report.write_report`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean

import numpy as np

from recall.atomic import atomic_file, read_json, write_json
from recall.cocktail_weights import CocktailSettings, cocktail_weights
from recall.data import read_records, render
from recall.errors import RecallError
from recall.finetune import FinetuneConfig, finetune
from recall.merge.engine import WEIGHTS_FILE, MergePlan, merge
from recall.merge.methods import get_method
from recall.merge.safetensors_io import SafetensorsModel
from recall.metrics import average, backward_transfer, forgetting, primary_score, unseen_average
from recall.models import describe, load_tokenizer
from recall.recall_weights import RecallSettings, recall_weights
from recall.similarity import layer_similarity
from recall.tasks.export import export_task
from recall.weights import softmax_weights, uniform_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, git_commit, machine  # noqa: E402

log = logging.getLogger("quality")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# The paper's sequential order (table 7); also the column order of every table.
TASKS = ["sst2", "squad_v2", "medmcqa", "iwslt2017_en_fr", "race"]
SCENARIOS = ("single", "multi", "sequential", "ablation")
# RECALL settings changed one at a time in the ablation scenario (paper appendix F)
ABLATIONS = {"recall_t0.25": {"temperature": 0.25}, "recall_cosine": {"similarity": "cosine"}}
SIGMAS = (0.3, 1.0, 3.0, 10.0, 30.0)


@dataclass(frozen=True)
class Budget:
    steps: int = 24  # optimizer steps per fine-tune
    batch: int = 4
    max_length: int = 384  # training examples longer than this are left out (see train_data)
    lr: float = 2e-4
    probe: int = 32  # training samples each RECALL reference is probed with (typical samples from these)
    typical: int = 8  # KMeans centres per layer
    sigma: float = 1.0
    cocktail_examples: int = 5
    density: float = 0.5  # DARE / TIES
    ewc_lambda: float = 1000.0
    ewc_samples: int = 16
    limit: int = 8  # test examples per task
    max_new_tokens: int = 24
    eval_batch: int = 8
    seed: int = 0

    def validate(self) -> None:
        for name, value in asdict(self).items():
            if name != "seed" and not value > 0:
                raise RecallError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.density > 1:
            raise RecallError(f"--density must be in (0, 1], got {self.density}")


class Bench:
    """Cached steps of the benchmark: each returns its output path, computing it only when missing."""

    def __init__(self, work: Path, data_dir: Path, budget: Budget) -> None:
        self.work, self.data_dir, self.b = work, data_dir, budget
        self.base = self._base()
        self.timings: dict[str, float] = {}
        self.twins: dict[str, str] = {}  # with-base merge -> its identical without-base twin

    def _base(self) -> Path:
        for candidate in (ROOT / "data" / "steps" / "base" / "model", ROOT / "models" / "base"):
            if (candidate / "config.json").is_file():
                return candidate
        from recall.base_model import pull_base

        return pull_base(ROOT / "models" / "base")

    def _timed(self, key: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[key] = round(time.perf_counter() - start, 1)
        log.info("%s done in %.0f s", key, self.timings[key])
        return out

    # --- data -------------------------------------------------------------------------------
    def train_data(self, task: str) -> Path:
        """The first steps x batch training examples of `task` whose rendered prompt + answer fit
        --max-length (one epoch), as prompt/response JSONL. Long RACE articles are skipped rather
        than letting one example fail the fine-tune."""
        out = self.work / "data" / f"{task}.train.jsonl"
        if out.is_file():
            return out
        pool = self.work / "data" / f"{task}.pool.jsonl"
        export_task(task, "train", pool, self.data_dir)
        tokenizer = load_tokenizer(describe(self.base))
        need = self.b.steps * self.b.batch
        kept = []
        for record in read_records(pool):
            if len(tokenizer(render(tokenizer, record), add_special_tokens=False)["input_ids"]) < self.b.max_length:
                kept.append(record)
                if len(kept) == need:
                    break
        if len(kept) < max(self.b.probe, self.b.batch):
            raise RecallError(f"only {len(kept)} {task} training examples fit --max-length {self.b.max_length}; raise it")
        import json

        with atomic_file(out) as fh:
            for r in kept:
                fh.write(json.dumps({"prompt": r.prompt, "response": r.response}, ensure_ascii=False) + "\n")
        pool.unlink()
        return out

    def probe(self, task: str) -> Path:
        """RECALL's probe set (and LM-Cocktail's examples): the first --probe training examples."""
        out = self.work / "data" / f"{task}.probe.jsonl"
        if not out.is_file():
            lines = self.train_data(task).read_text().splitlines(keepends=True)[: self.b.probe]
            with atomic_file(out) as fh:
                fh.write("".join(lines))
        return out

    # --- models -----------------------------------------------------------------------------
    def finetune(self, name: str, start: Path, task: str, ewc_from: str | None = None) -> Path:
        out = self.work / "models" / name
        if (out / "train_metrics.json").is_file():
            return out
        config = FinetuneConfig(
            max_steps=self.b.steps, batch_size=self.b.batch, max_length=self.b.max_length, lr=self.b.lr,
            seed=self.b.seed, ewc_lambda=self.b.ewc_lambda if ewc_from else 0.0,
            ewc_from=str(self.train_data(ewc_from)) if ewc_from else None, ewc_samples=self.b.ewc_samples,
        )
        return self._timed(f"finetune {name}", finetune, start, str(self.train_data(task)), out, self.data_dir, config)

    def merge(self, name: str, method: str, models: list[Path], weights: list[float] | None = None,
              references: list[tuple[int, str]] | None = None, params: dict | None = None,
              reference: int = -1, recall: dict | None = None) -> Path:
        """`method` over `models`; `references` (model index, task) feed RECALL and LM-Cocktail;
        `recall` overrides RECALL settings (the ablations)."""
        out = self.work / "models" / name
        if (out / WEIGHTS_FILE).is_file():
            return out
        m = get_method(method)
        infos = [describe(p) for p in models]
        groups = infos[0].num_layers + 1
        extra: dict = {}
        if m.weights == "representations":
            settings = RecallSettings(**{"typical": self.b.typical, "sigma": self.b.sigma,
                                         "max_length": self.b.max_length, "seed": self.b.seed, **(recall or {})})
            refs = [(i, self.probe(t)) for i, t in references]
            w, extra = self._timed(f"recall weights {name}", recall_weights, infos, refs, settings,
                                   self.work / "features" / name)
        elif m.weights == "loss":
            settings = CocktailSettings(examples=self.b.cocktail_examples, max_length=self.b.max_length)
            cw, extra = cocktail_weights(infos, [self.probe(t) for _, t in references], settings)
            w = uniform_weights(groups, cw.tolist())
        else:
            w = uniform_weights(groups, weights or [m.default_weight or 1 / len(infos)] * len(infos))
        plan = MergePlan(infos, m, w, base=describe(self.base) if m.needs_base else None,
                         params=m.resolve(params or {}), reference=reference, extra=extra)
        return merge(plan, out)

    def evaluate(self, model: Path) -> dict:
        from recall.evaluation.pipeline import evaluate

        out = self.work / "eval" / model.name
        if (out / "metrics.json").is_file():
            return read_json(out / "metrics.json")
        return self._timed(f"evaluate {model.name}", evaluate, model, TASKS, out, self.data_dir, self.b.limit,
                           self.b.eval_batch, self.b.max_new_tokens)

    def metrics_path(self, model: Path) -> Path:
        return self.work / "eval" / model.name / "metrics.json"

    def scores(self, model: Path) -> dict[str, float]:
        metrics = self.evaluate(model)
        return {t: primary_score(metrics, t) for t in TASKS}

    # --- scenarios --------------------------------------------------------------------------
    def expert(self, task: str) -> Path:
        return self.finetune(f"expert-{task}", self.base, task)

    def single(self, tasks: list[str]) -> dict:
        """Table 1: each expert alone and merged with the base, aggregated by `table1`."""
        rows: dict[str, dict[str, dict[str, float]]] = {}
        for task in tasks:
            e = self.expert(task)
            variants = {
                "sft": e,
                "average": self.merge(f"single-{task}-average", "average", [self.base, e], [0.5, 0.5]),
                # DARE combined with averaging: base + 0.5 * DARE(expert - base) (the base's delta is 0)
                "dare_linear": self.merge(f"single-{task}-dare_linear", "dare_linear", [self.base, e], [0.5, 0.5],
                                          params={"density": self.b.density, "seed": self.b.seed}),
                "lm_cocktail": self.merge(f"single-{task}-lm_cocktail", "lm_cocktail", [self.base, e],
                                          references=[(1, task)]),
                "recall": self.merge(f"single-{task}-recall", "recall", [self.base, e], references=[(1, task)]),
            }
            for method, model in variants.items():
                rows.setdefault(method, {})[task] = self.scores(model)
        return {"methods": self.table1(rows), "base_model": self.scores(self.base), "finetuned_on": tasks}

    def ablation(self, tasks: list[str]) -> dict:
        """Appendix F in small: table 1's RECALL merges again with one setting changed, aggregated alike."""
        rows: dict[str, dict[str, dict[str, float]]] = {}
        for task in tasks:
            e = self.expert(task)
            rows.setdefault("recall", {})[task] = self.scores(
                self.merge(f"single-{task}-recall", "recall", [self.base, e], references=[(1, task)]))
            for label, change in ABLATIONS.items():
                model = self.merge(f"single-{task}-{label}", "recall", [self.base, e], references=[(1, task)],
                                   recall=change)
                rows.setdefault(label, {})[task] = self.scores(model)
            rows.setdefault("sft", {})[task] = self.scores(e)
        return {"methods": self.table1(rows), "changes": ABLATIONS, "finetuned_on": tasks}

    @staticmethod
    def table1(rows: dict[str, dict[str, dict[str, float]]]) -> dict:
        """Per method: per_task = mean over the single merges (one per fine-tuning task) of each task's
        score; avg = mean of per_task; unseen_avg = mean over the merges of each merge's mean on the
        four tasks its expert was not trained on."""
        methods = {}
        for method, by_task in rows.items():
            per_task = {t: fmean(s[t] for s in by_task.values()) for t in TASKS}
            methods[method] = {
                "avg": average(list(per_task.values())),
                "unseen_avg": fmean(unseen_average(s, [ft]) for ft, s in by_task.items()),
                "per_task": per_task,
                "rows": by_task,  # finetuned_on -> scores
            }
        return methods

    def multi(self) -> dict:
        """Table 2: the five experts merged, without and with the base model among the inputs."""
        experts = [self.expert(t) for t in TASKS]
        out: dict = {}
        for setting, with_base in (("without_base", False), ("with_base", True)):
            models = ([self.base] if with_base else []) + experts
            offset = 1 if with_base else 0
            n = len(models)
            tag = "multi-base" if with_base else "multi"
            variants = {
                "average": self.merge(f"{tag}-average", "average", models, [1 / n] * n),
                "dare_linear": self.merge(f"{tag}-dare_linear", "dare_linear", models, [1 / n] * n,
                                          params={"density": self.b.density, "seed": self.b.seed}),
                # task arithmetic and TIES: weight 1 per task vector, lambda 1 (the registry's defaults)
                "task_arithmetic": self.merge(f"{tag}-task_arithmetic", "task_arithmetic", models),
                "ties": self.merge(f"{tag}-ties", "ties", models, params={"density": self.b.density}),
                "recall": self.merge(f"{tag}-recall", "recall", models,
                                     references=[(offset + i, t) for i, t in enumerate(TASKS)]),
            }
            methods = {}
            for method, model in variants.items():
                scores = self._scores_or_twin(model, tag, method)
                methods[method] = {"avg": average(list(scores.values())), "unseen_avg": None, "per_task": scores}
            out[setting] = {"methods": methods}
        return {"methods": out["without_base"]["methods"], "with_base": out["with_base"],
                "base_model": self.scores(self.base)}

    def _scores_or_twin(self, model: Path, tag: str, method: str) -> dict[str, float]:
        """A with-base merge whose weights equal its without-base twin's reuses the twin's evaluation
        (task arithmetic / TIES: the base's task vector is zero; checked on the written tensors)."""
        if tag == "multi-base":
            twin = self.work / "models" / f"multi-{method}"
            if twin.is_dir() and same_weights(model, twin):
                log.info("%s has the same weights as %s; reusing its evaluation", model.name, twin.name)
                self.twins[model.name] = twin.name
                return self.scores(twin)
        return self.scores(model)

    def sequential(self) -> dict:
        """Table 7 / figure 5. Step 1 of every chain is the SST-2 expert (RECALL: its single merge)."""
        chains: dict[str, list[Path]] = {"sft": [], "ewc": [], "recall": []}
        for t, task in enumerate(TASKS):
            if t == 0:
                chains["sft"].append(self.expert(task))
                chains["ewc"].append(self.expert(task))
                new = self.expert(task)
                chains["recall"].append(self.merge(f"single-{task}-recall", "recall", [self.base, new],
                                                   references=[(1, task)]))
                continue
            chains["sft"].append(self.finetune(f"seq-sft-{t + 1}-{task}", chains["sft"][-1], task))
            chains["ewc"].append(self.finetune(f"seq-ewc-{t + 1}-{task}", chains["ewc"][-1], task,
                                               ewc_from=TASKS[t - 1]))
            new = self.finetune(f"seq-recall-new-{t + 1}-{task}", chains["recall"][-1], task)
            chains["recall"].append(self.merge(f"seq-recall-{t + 1}-{task}", "recall", [chains["recall"][-1], new],
                                               references=[(1, task)]))
        methods = {}
        for method, models in chains.items():
            matrix = [[self.scores(m)[task] for task in TASKS] for m in models]
            final = dict(zip(TASKS, matrix[-1]))
            methods[method] = {
                "avg": average(matrix[-1]), "unseen_avg": unseen_average(final, TASKS), "per_task": final,
                "matrix": matrix, "bwt": backward_transfer(matrix), "forgetting": forgetting(matrix),
                "models": [m.name for m in models],
            }
        return {"methods": methods, "order": TASKS}


def load_weights(folder: Path) -> dict:
    weights = SafetensorsModel(folder)
    return {name: weights.read(name) for name in weights.tensors}


def same_weights(a: Path, b: Path) -> bool:
    ta, tb = load_weights(a), load_weights(b)
    return ta.keys() == tb.keys() and all(np.array_equal(ta[k].float().numpy(), tb[k].float().numpy()) for k in ta)


def relative_delta(model: Path, base: Path) -> float:
    """||model - base|| / ||base|| over all floating tensors: how far fine-tuning moved the weights."""
    tm, tb = load_weights(model), load_weights(base)
    num = sum(float((tm[k].float() - tb[k].float()).pow(2).sum()) for k in tb if tb[k].is_floating_point())
    den = sum(float(tb[k].float().pow(2).sum()) for k in tb if tb[k].is_floating_point())
    return (num / den) ** 0.5


def recall_analysis(bench: Bench, name: str) -> dict:
    """Merge weights and similarities of a RECALL merge, and its weights recomputed for other sigmas
    from the features it saved (no new extraction)."""
    folder = bench.work / "models" / name
    record = read_json(folder / WEIGHTS_FILE)
    layers = np.array(record["layers"])
    out = {"weights_mean": layers.mean(0).tolist(), "weights_min": layers.min(0).tolist(), "weights_max": layers.max(0).tolist(),
           "weights_first_mid_last": [layers[0].tolist(), layers[len(layers) // 2].tolist(), layers[-1].tolist()]}
    refs = record.get("references", [])
    sims = np.array([r["similarity"] for r in refs])
    out["similarity_min"], out["similarity_max"] = sims.min(axis=(0, 1)).tolist(), sims.max(axis=(0, 1)).tolist()
    sweep = {}
    feats = bench.work / "features" / name
    n_models = layers.shape[1]
    for sigma in SIGMAS:
        rows = []
        for r in refs:
            index = record["models"].index(r["reference"])
            ref_all = np.load(feats / f"ref{index}-all.npy", mmap_mode="r")
            typical = r["typical"]
            reps = [np.asarray(ref_all[typical]) if q == index else np.load(feats / f"ref{index}-model{q}.npy")
                    for q in range(n_models)]
            sim = layer_similarity(reps[index], np.stack(reps), "rbf", sigma)
            rows.append(softmax_weights(sim, 1.0))
        w = np.mean(rows, axis=0)
        sweep[str(sigma)] = {"mean": w.mean(0).round(4).tolist(), "max": w.max(0).round(4).tolist()}
    out["sigma_sweep"] = sweep
    return out


def analysis(bench: Bench, results: dict) -> dict:
    found: dict = {"relative_delta_from_base": {}, "recall": {}}
    found["train_tokens_per_task"] = {}
    for task in TASKS:
        e = bench.work / "models" / f"expert-{task}"
        if e.is_dir():
            found["relative_delta_from_base"][f"expert-{task}"] = relative_delta(e, bench.base)
            found["train_tokens_per_task"][task] = read_json(e / "train_metrics.json")["train_tokens"]
    for name in [f"single-{t}-recall" for t in TASKS] + ["multi-recall", "multi-base-recall"]:
        if (bench.work / "models" / name / WEIGHTS_FILE).is_file() and (bench.work / "features" / name).is_dir():
            found["recall"][name] = recall_analysis(bench, name)
    single = results.get("single", {}).get("methods", {})
    if single:
        found["single_spread"] = {  # largest score difference between any two merges of one expert
            t: max(max(m["rows"][t][c] for m in single.values() if t in m["rows"])
                   - min(m["rows"][t][c] for m in single.values() if t in m["rows"]) for c in TASKS)
            for t in results["single"]["finetuned_on"]}
    return found


def report_spec(bench: Bench, results: dict, spec_path: Path) -> dict:
    rel = lambda p: os.path.relpath(p, spec_path.parent)  # noqa: E731
    work = bench.work
    spec: dict = {"tasks": TASKS}
    base_eval = rel(bench.metrics_path(bench.base))
    if "single" in results:
        names = {"sft": "expert-{t}", "average": "single-{t}-average", "dare_linear": "single-{t}-dare_linear",
                 "lm_cocktail": "single-{t}-lm_cocktail", "recall": "single-{t}-recall"}
        spec["single"] = [{"finetuned_on": t, "method": m, "metrics": rel(work / "eval" / n.format(t=t) / "metrics.json")}
                          for t in results["single"]["finetuned_on"] for m, n in names.items()]
    if "multi" in results:
        spec["multi"] = [{"setting": "", "method": "base model", "metrics": base_eval}]
        for setting, tag in (("without base model", "multi"), ("with base model", "multi-base")):
            for m in ("average", "dare_linear", "task_arithmetic", "ties", "recall"):
                name = bench.twins.get(f"{tag}-{m}", f"{tag}-{m}")
                spec["multi"].append({"setting": setting, "method": m,
                                      "metrics": rel(work / "eval" / name / "metrics.json")})
    if "sequential" in results:
        spec["sequential"] = [
            {"method": m, "steps": [{"task": t, "metrics": rel(work / "eval" / name / "metrics.json")}
                                    for t, name in zip(TASKS, v["models"])]}
            for m, v in results["sequential"]["methods"].items()]
    spec["merge_weights"] = [rel(work / "models" / n / WEIGHTS_FILE)
                             for n in [f"single-{t}-recall" for t in TASKS] + ["multi-recall", "seq-recall-5-race"]
                             if (work / "models" / n / WEIGHTS_FILE).is_file()]
    return spec


def parse_args() -> tuple[argparse.Namespace, Budget]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--single-tasks", nargs="+", choices=TASKS, default=TASKS,
                   help="fine-tuning tasks of the single scenario (default: all five)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--work", type=Path, default=ROOT / "data" / "quality", help="models and evaluations (resumable)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--experts-only", action="store_true",
                   help="only fine-tune the --single-tasks experts (e.g. in a second process beside evaluations)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is much faster on a busy shared CPU)")
    defaults = Budget()
    for name, value in asdict(defaults).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = p.parse_args()
    budget = Budget(**{k: getattr(args, k) for k in asdict(defaults)})
    budget.validate()
    for task in TASKS:
        if not (args.data_dir / task / "test.jsonl").is_file():
            raise RecallError(f"{args.data_dir / task / 'test.jsonl'} does not exist; pass --data-dir with the five tasks")
    return args, budget


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        args, budget = parse_args()
    except RecallError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the OpenCompass subprocesses too
    bench = Bench(args.work.resolve(), args.data_dir.resolve(), budget)
    if args.experts_only:
        for task in args.single_tasks:
            bench.expert(task)
        return 0
    out = args.out
    json_path = out / "quality.json"
    previous = read_json(json_path) if json_path.is_file() else {}
    if previous and previous["budget"] != asdict(budget):
        print(f"error: {json_path} holds results of another budget ({previous['budget']}); run with that budget "
              "to add scenarios, or pass another --out", file=sys.stderr)
        return 2
    results, runs = previous.get("scenarios", {}), previous.get("runs", {})
    bench.twins.update(previous.get("twins", {}))  # evaluations shared in an earlier run
    for scenario in [s for s in SCENARIOS if s in args.scenarios]:
        log.info("scenario %s", scenario)
        run = getattr(bench, scenario)
        results[scenario] = run(args.single_tasks) if scenario in ("single", "ablation") else run()
        runs[scenario] = {"command": command_line(), "commit": git_commit(), "machine": machine()}
        record = {"scenarios": results, "runs": runs, "twins": bench.twins, "budget": asdict(budget), "seed": budget.seed,
                  "base": str(bench.base), "tasks": TASKS, "timings_s": {**previous.get("timings_s", {}), **bench.timings},
                  "analysis": analysis(bench, results)}
        write_json(json_path, record)
        spec_path = bench.work / "report_spec.json"
        write_json(spec_path, report_spec(bench, results, spec_path))
        from recall.report import write_report

        report = write_report(spec_path, out / "quality_report")
        write_markdown(out / "quality.md", record, report)
        log.info("wrote %s and %s", json_path, out / "quality.md")
    return 0


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def write_markdown(path: Path, record: dict, report: Path) -> None:
    b = record["budget"]
    lines = [
        "# Quality benchmark (RECALL tables 1, 2, 7 in small)", "",
        *[f"{scenario}: `{run['command']}` at commit `{run['commit']}`  " for scenario, run in record["runs"].items()],
        f"Base: SmolLM2-135M-Instruct (`{record['base']}`)  ",
        f"Budget: `{b}`  ",
        "Training tokens per task (prompt + answer, one fine-tune): "
        + ", ".join(f"{t} {n}" for t, n in record["analysis"]["train_tokens_per_task"].items())
        + f"; test examples per task: {b['limit']}.", "",
        "Scores are each task's primary metric (accuracy; SQuAD2.0 exact match; IWSLT BLEU), 0-100, on the first "
        f"{b['limit']} test examples per task, so one example is {100 / b['limit']:.1f} points: differences below "
        "that are noise.", "",
    ]
    for scenario, data in record["scenarios"].items():
        lines += [f"## {scenario}", "", "| method | " + " | ".join(TASKS) + " | avg | unseen avg |",
                  "|---|" + "---|" * (len(TASKS) + 2)]
        if "base_model" in data:
            s = data["base_model"]
            lines.append("| base model | " + " | ".join(_fmt(s[t]) for t in TASKS) + f" | {_fmt(fmean(s.values()))} | – |")
        for m, v in data["methods"].items():
            lines.append(f"| {m} | " + " | ".join(_fmt(v['per_task'][t]) for t in TASKS)
                         + f" | {_fmt(v['avg'])} | {_fmt(v['unseen_avg'])} |")
        if "with_base" in data:
            for m, v in data["with_base"]["methods"].items():
                lines.append(f"| {m} (with base) | " + " | ".join(_fmt(v['per_task'][t]) for t in TASKS)
                             + f" | {_fmt(v['avg'])} | – |")
        if scenario == "sequential":
            lines += ["", "| method | BWT | forgetting per task |", "|---|---|---|"]
            lines += [f"| {m} | {_fmt(v['bwt'])} | {', '.join(_fmt(f) for f in v['forgetting'])} |"
                      for m, v in data["methods"].items()]
        lines.append("")
    a = record["analysis"]
    lines += ["## Analysis (computed)", "", "Relative weight change of each expert, ||expert - base|| / ||base||:", ""]
    lines += [f"- {k}: {v:.2e}" for k, v in a["relative_delta_from_base"].items()]
    if a.get("single_spread"):
        lines += ["", "Largest score difference on any task between the five variants of one expert (points):", ""]
        lines += [f"- {t}: {v:.1f}" for t, v in a["single_spread"].items()]
    for name, r in a["recall"].items():
        lines += ["", f"RECALL `{name}` (models in merge order): per-model weight range over layer groups "
                  f"mean {np.round(r['weights_mean'], 4).tolist()} min {np.round(r['weights_min'], 4).tolist()} max {np.round(r['weights_max'], 4).tolist()}; "
                  f"similarity range min {np.round(r['similarity_min'], 4).tolist()} max {np.round(r['similarity_max'], 4).tolist()}; "
                  "weights for other sigmas: "
                  + "; ".join(f"sigma {s}: mean {v['mean']} max {v['max']}" for s, v in r["sigma_sweep"].items())]
    if (path.parent / "quality_notes.md").is_file():
        lines += ["", (path.parent / "quality_notes.md").read_text()]
    body = report.read_text().replace("](", "](quality_report/")
    lines += ["", "---", "", body.replace("# RECALL report", "# Tables from recall.report", 1)]
    with atomic_file(path) as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
