"""Weight sources: where a merge method's per-model, per-layer weights come from, one object each.

A method names its source (`register(..., weights="representations")`); everything that differs
between sources lives on the source, so `recall merge` and the pipeline both dispatch on it, never on
a method's name:

- `options`: the `recall merge` options it reads (argparse dests); any other weight option is refused;
- `settings`: its settings class, and `section`: where params.yaml sets them (a top-level section,
  e.g. RECALL's `recall`, or None: the method's own `methods.<m>` mapping beside its kernel parameters);
- `reads`: method parameters the source reads rather than the kernel, with their defaults (LiNeS's
  alpha and beta, from `depth_scales`);
- the pipeline stages it needs before a merge (`step_stages` in a chain step, `expert_stages` per task
  and `multi_stages` once in the multi scenario; each one entry of `recall.pipeline.table.TABLE`) and
  `merge_reads`, the stages whose outputs the merge reads (`recall.pipeline.stages.EVIDENCE`);
- `gather`: its evidence from `recall merge`'s options, and `rows`: the evidence as weight rows
  (L+1 layer groups, one column per model), which `recall.merge.methods.resolve_weights` returns.

Adding a source: one subclass here, registered with `@source`; a method then names it.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from recall.errors import RecallError
from recall.weights.rows import calibrated, softmax_weights, uniform_weights

REQUIRED = object()  # a parameter default meaning "the user must give it"


def keyword_defaults(fn: Callable[..., Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """`fn`'s keyword-only parameters (those in `skip` left out) -> their defaults, REQUIRED where there is none."""
    return {
        p.name: REQUIRED if p.default is p.empty else p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.name not in skip
    }


@dataclass
class Evidence:
    """What a source measured for one merge: keywords of its `rows`, their provenance for
    merge_weights.json, and (Fisher merging) each model's Fisher folder for the merge engine."""

    values: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    fisher: list[Path] | None = None


class WeightSource:
    name: ClassVar[str]
    options: ClassVar[frozenset[str]] = frozenset({"weights"})
    reads: ClassVar[Mapping[str, Any]] = {}  # method parameters it reads rather than the kernel -> defaults
    section: ClassVar[str | None] = None
    softmax: ClassVar[bool] = False  # rows are a softmax over models (their spread is recorded and checked)
    step_stages: ClassVar[tuple[str, ...]] = ()
    expert_stages: ClassVar[tuple[str, ...]] = ()
    multi_stages: ClassVar[tuple[str, ...]] = ()
    merge_reads: ClassVar[tuple[str, ...]] = ()
    merge_keys: ClassVar[tuple[str, ...]] = ()  # the keys of its `section` that the merge reads
    reported: ClassVar[bool] = False  # the report shows its merges' weights and evidence

    @classmethod
    def settings(cls) -> type | None:
        """Its settings class (imported when asked: the CLI starts without torch)."""
        return None

    @classmethod
    def settings_from(cls, given: Mapping[str, Any], path: str = ""):
        """Its settings from a mapping (params.yaml's, or `recall merge`'s options); None where it has none."""
        kind = cls.settings()
        if kind is None:
            return None
        return kind.from_mapping(dict(given), path) if path else kind(**given)

    @classmethod
    def gather(cls, args: argparse.Namespace, method, infos: list, workdir: Path) -> Evidence:
        """Its evidence from `recall merge`'s options: the given weights."""
        return Evidence({"given": args.weights})

    @classmethod
    def rows(cls, method, models: Sequence, *, given: Sequence[float] | None = None, params=None) -> np.ndarray:
        """The given weights, else the method's default weight for every model (1/N unless it has one),
        the same at every layer."""
        return uniform_weights(models[0].num_layers + 1, given_weights(method, models, given))


def given_weights(method, models: Sequence, given: Sequence[float] | None) -> list[float]:
    n = len(models)
    weights = list(given) if given else [method.default_weight or 1.0 / n] * n
    if len(weights) != n:
        raise RecallError(f"--weights has {len(weights)} values for {n} models; give one per model")
    return weights


SOURCES: dict[str, type[WeightSource]] = {}


def source(cls: type[WeightSource]) -> type[WeightSource]:
    """Class decorator registering a weight source under its `name`."""
    SOURCES[cls.name] = cls
    return cls


def get_source(name: str) -> type[WeightSource]:
    if name not in SOURCES:
        raise RecallError(f"unknown weight source {name!r}; choose one of {', '.join(SOURCES)}")
    return SOURCES[name]


def given_settings(args: argparse.Namespace, kind: type, **dests: str):
    """A settings dataclass from the options the user gave; the rest keep the dataclass defaults.
    `dests` maps a field to its option's dest where the two are named differently."""
    values = {f.name: getattr(args, dests.get(f.name, f.name)) for f in fields(kind)}
    return kind(**{name: value for name, value in values.items() if value is not None})


def model_index(models: list[str], spec: str, flag: str) -> int:
    if spec not in models:
        raise RecallError(f"{flag} {spec} is not one of --models; list it there too")
    return models.index(spec)


@source
class Given(WeightSource):
    """The user's weights (or the method's default), the same at every layer."""

    name = "given"


def depth_scales(rows: int, *, alpha: float = 0.5, beta: float = 0.5) -> np.ndarray:
    """LiNeS's scale of each layer group: alpha + beta * depth, depth 0 at the first block, 1 at the last."""
    blocks = np.arange(rows - 1, dtype=np.float64) / max(rows - 2, 1)
    return alpha + beta * np.concatenate([[0.0], blocks])


@source
class Depth(WeightSource):
    """LiNeS: the given weights times alpha + beta * (block / (L - 1)); the embeddings' group at the
    first block's scale, the final norm and lm_head at the last's. As a weight source its kernel needs
    no tensor names, and merge_weights.json records the scales it applied."""

    name = "depth"
    reads = keyword_defaults(depth_scales)

    @classmethod
    def rows(cls, method, models, *, given=None, params=None):
        settings = method.resolve(params or {})  # the defaults where none are given
        scales = depth_scales(models[0].num_layers + 1, **{k: settings[k] for k in cls.reads})
        return scales[:, None] * np.asarray(given_weights(method, models, given))


@source
class Representations(WeightSource):
    """RECALL (section 3, algorithm 1): per reference model, a softmax over the models of each layer's
    similarities to it (`calibrate`d first, `recall.weights.rows.calibrated`), averaged over the
    references. In the pipeline: the new model's features of its task's training samples, their typical
    samples, then every merged model's similarity to it on them (each expert on its own task in the
    multi scenario, `similarity` once over all of them); its settings are params.yaml's `recall` section."""

    name = "representations"
    options = frozenset(
        {
            "data",
            "temperature",
            "calibrate",
            "max_length",
            "seed",
            "experts",
            "typical",
            "similarity",
            "sigma",
            "normalize_states",
            "batch_size",
            "workdir",
        }
    )
    section = "recall"
    softmax = True
    step_stages = ("features", "typical", "similarity")
    expert_stages = ("features", "typical")
    multi_stages = ("similarity",)
    merge_reads = ("similarity",)
    reported = True
    # the settings each stage reads (params dependencies; the merge reads MERGE_KEYS)
    FEATURE_KEYS = ("samples", "batch_size", "max_length")
    TYPICAL_KEYS = ("typical", "seed")
    SIMILARITY_KEYS = ("similarity", "sigma", "normalize", "batch_size", "max_length")
    merge_keys = ("temperature", "calibrate")

    @classmethod
    def settings(cls):
        from recall.weights.representations import RecallSettings

        return RecallSettings

    @classmethod
    def gather(cls, args, method, infos, workdir):
        from recall.weights.representations import RecallSettings, references_similarities

        experts = args.experts or [args.new or args.models[-1]]
        if not args.data or len(args.data) != len(experts):
            raise RecallError(
                f"--method {method.name} needs --data: one JSONL file per reference model ({len(experts)})"
            )
        settings = given_settings(args, RecallSettings, normalize="normalize_states")
        settings.validate()
        references = [(model_index(args.models, e, "--experts/--new"), d) for e, d in zip(experts, args.data)]
        sims, extra = references_similarities(infos, references, settings, args.workdir)
        return Evidence(
            {"similarities": sims, "temperature": settings.temperature, "calibrate": settings.calibrate}, extra
        )

    @classmethod
    def step_evidence(cls, record: dict) -> dict:
        """The similarities of `rows` from a chain step's similarity.json (the pipeline's `similarity`
        stage: `layers`, the (L+1, 2) similarities of the step's models to its new one); the merge's
        settings (`merge_keys`) complete them."""
        return {"similarities": [np.array(record["layers"])]}

    @classmethod
    def rows(cls, method, models, *, similarities=(), temperature=1.0, calibrate="none", params=None):
        if not similarities:
            raise RecallError(f"--method {method.name} needs the similarities of at least one reference model")
        return np.mean([softmax_weights(calibrated(s, calibrate), temperature) for s in similarities], axis=0)


@source
class Loss(WeightSource):
    """LM-Cocktail: softmax(-loss / T) of each model's loss on a few examples of the target task(s),
    the same at every layer. In the pipeline: the losses on the first examples of the step's task (of
    every task in the multi scenario), `losses`; its settings are the method's `methods.<m>` mapping."""

    name = "loss"
    options = frozenset({"data", "temperature", "max_length", "examples"})
    softmax = True
    step_stages = multi_stages = merge_reads = ("losses",)

    @classmethod
    def settings(cls):
        from recall.weights.cocktail import CocktailSettings

        return CocktailSettings

    @classmethod
    def gather(cls, args, method, infos, workdir):
        from recall.weights.cocktail import CocktailSettings, cocktail_losses

        settings = given_settings(args, CocktailSettings)
        losses, extra = cocktail_losses(infos, args.data or [], settings)
        return Evidence({"losses": losses, "temperature": settings.temperature}, extra)

    @classmethod
    def rows(cls, method, models, *, losses, temperature=1.0, params=None):
        weights = softmax_weights(-np.asarray(losses, dtype=np.float64)[None], temperature)[0]
        return uniform_weights(models[0].num_layers + 1, weights)


@source
class Fisher(WeightSource):
    """Fisher merging: the given weights (default 1/N), and each model's diagonal Fisher on its own
    task's examples, which the kernel weighs every entry by. In the pipeline: `fisher`, each merged
    model's Fisher folder; its settings are the method's `methods.<m>` mapping."""

    name = "fisher"
    options = frozenset({"weights", "data", "max_length", "examples", "workdir"})
    step_stages = multi_stages = merge_reads = ("fisher",)

    @classmethod
    def settings(cls):
        from recall.weights.fisher import FisherSettings

        return FisherSettings

    @classmethod
    def gather(cls, args, method, infos, workdir):
        from recall.weights.fisher import FisherSettings, fisher_folders

        given_weights(method, infos, args.weights)  # a wrong count fails before the (slow) Fisher
        settings = given_settings(args, FisherSettings)
        folders = fisher_folders(infos, args.data or [], settings, args.workdir or workdir)
        return Evidence({"given": args.weights}, fisher=folders)
