"""params.yaml's sections: one settings dataclass (`recall.settings`) per top-level key, whose fields are
the keys it takes with their types, defaults, rules and help. `recall.pipeline.params` parses a file
into them and checks what no section can check alone; `recall params schema` prints their JSON schema.
This module imports no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from recall.evaluation.config import BACKENDS, DEFAULT_BACKEND
from recall.evaluation.pipeline import MODES as EVAL_MODES
from recall.pipeline.layout import BASE_STEP  # noqa: F401  (params.yaml's name for the base model's step)
from recall.settings import UNKNOWN, Rule, Settings, at_least, one_of, setting
from recall.tasks.formats import FORMATS
from recall.training.config import FinetuneConfig
from recall.weights.config import RecallSettings

SCENARIOS = ("sequential", "single", "multi")
REGISTRY_MODES = ("copy", "reference")  # tracking.registry
# A compared chain's label (`methods.<label>`): a part of stage names, which are joined with '-'
CHAIN_LABEL = re.compile(r"[a-z0-9_]+")


def limits_ok(limit: int | dict[str, int | None]) -> bool:
    per_format = isinstance(limit, dict)
    counts = limit.values() if per_format else [limit]
    return all(n is None or n >= 1 for n in counts) and (not per_format or set(limit) <= set(FORMATS))


LIMIT = Rule(
    limits_ok,
    f"{{name}} must be a number of test examples >= 1 (or null for all), or one per task format "
    f"({', '.join(FORMATS)}), e.g. {{{{classification: 200, generation: 100}}}}; got {{value!r}}",
)
MODES = Rule(
    lambda modes: set(modes) <= set(FORMATS) and all(m in EVAL_MODES for m in modes.values()),
    f"{{name}} must map task formats ({', '.join(FORMATS)}) to one of {', '.join(EVAL_MODES)}, "
    f"e.g. {{{{classification: ppl, multiple_choice: ppl}}}}; got {{value!r}}",
)


@dataclass(frozen=True)
class Step(Settings):
    task: str
    after: str = setting(help='the step whose model this one starts from ("base" for the base model)')


@dataclass(frozen=True)
class BaseSection(Settings):
    model: str = setting(help='"smollm2" (SmolLM2-135M-Instruct from PyPI), or a model folder, .gguf file or hub id')
    trust_remote_code: bool = setting(
        False, help="run Python code shipped in model folders (`auto_map`); only if you trust it"
    )


@dataclass(frozen=True)
class DataSection(Settings):
    source: str = setting(help='"generated" (the generated suite), or a folder holding <task>/{train,test}.jsonl')
    train_size: int = setting(rule=at_least(1), help="examples kept per task and split")
    test_size: int = setting(rule=at_least(1))
    seed: int = setting(0, help="the seed of the generated suite")


@dataclass(frozen=True)
class MultiSection(Settings):
    with_base: bool = setting(True, help="multi scenario: merge the base model with the experts, or the experts alone")


@dataclass(frozen=True)
class EvaluateSection(Settings):
    batch_size: int = setting(rule=at_least(1))
    tasks: str = setting(
        "all",
        one_of("all", "seen", "new"),
        help="the tasks scored after a step: all, those seen so far, or only the new one",
    )
    limit: int | dict[str, int | None] | None = setting(None, LIMIT, help="test examples per task or format; null: all")
    max_new_tokens: int | None = setting(None, at_least(1), help="reply cap; null: each format's own")
    mode: dict[str, str] | None = setting(None, MODES, help="task format -> ppl or gen; null: each format's own")
    backend: str = setting(
        DEFAULT_BACKEND,
        one_of(*BACKENDS, message=UNKNOWN),
        help="how OpenCompass runs the model: hf (transformers), or on a CUDA GPU vllm / lmdeploy (gen only, no nll)",
    )
    unseen: tuple[str, ...] = setting(
        (),
        help="tasks outside the sequence, scored after its last step: how the final model does on tasks it "
        "never learned",
    )


@dataclass(frozen=True)
class RecallSection(RecallSettings):
    samples: int = setting(rule=at_least(1), kw_only=True, help="task examples whose representations are clustered")


@dataclass(frozen=True)
class TrackingSection(Settings):
    experiment: str = setting("recall", help="the MLflow experiment")
    registry: str = setting(
        "copy",
        one_of(*REGISTRY_MODES, message=UNKNOWN),
        help="how a merged model enters MLflow's registry: copy (its weights into the artifact store, so it loads "
        "wherever the store is reachable) or reference (the version points at its DVC-tracked folder: no "
        "bytes copied, for long benchmarks)",
    )


@dataclass(frozen=True)
class PromoteSection(Settings):
    """The gate after each step of the production chain (`recall.gate`): which models are served."""

    method: str = setting("recall", help="the compared method whose chain is served (sequential scenario)")
    tolerance: float = setting(
        2.0, at_least(0, " points"), help="an earlier task may drop this much, or not surely more"
    )
    # a Prefect notification block "<type slug>/<name>" (e.g. custom-webhook/ops) told of refusals and failures
    notify: str | None = setting(
        None,
        Rule(
            lambda v: v.count("/") == 1 and all(v.split("/")),
            "{name} must name a Prefect notification block as <type slug>/<name>, e.g. custom-webhook/ops; "
            "got {value!r}",
        ),
    )


@dataclass(frozen=True)
class Sections(Settings):
    """params.yaml, typed: one field per top-level key."""

    base: BaseSection
    data: DataSection
    scenario: str = setting(rule=one_of(*SCENARIOS, message=UNKNOWN))
    sequence: tuple[Step, ...] = setting(
        rule=Rule(bool, "the sequence in params.yaml is empty; list at least one {{task, after}} step")
    )
    # compared chain -> its parameters; what each method takes is checked in `validate_methods` (the
    # registry imports torch, so the schema names no method)
    methods: dict = setting(
        rule=Rule(
            bool,
            "methods must be a non-empty mapping of method -> parameters, e.g. methods: {{recall: {{}}, sft: {{}}}}",
            {
                "propertyNames": {"pattern": f"^{CHAIN_LABEL.pattern}$"},
                "additionalProperties": {
                    "anyOf": [
                        {
                            "type": "object",
                            "properties": {
                                "method": {
                                    "type": "string",
                                    "description": "the registered method this chain runs (default: its label), "
                                    "e.g. recall_paper: {method: recall, sigma: 1.0}",
                                },
                                "seeds": {
                                    "type": "array",
                                    "items": {"type": "integer"},
                                    "minItems": 1,
                                    "description": "a protocol's training seeds this chain runs with",
                                },
                            },
                        },
                        {"type": "null"},
                    ]
                },
            },
        ),
        help="each compared chain, its own through every stage: a registered method by name with its parameters "
        "(ties: {density: 0.5}), or a label of lowercase letters, digits and underscores with `method:` "
        "(recall_paper: {method: recall, sigma: 1.0}; a RECALL chain may set keys of the `recall` section)",
    )
    finetune: FinetuneConfig
    recall: RecallSection
    evaluate: EvaluateSection
    multi: MultiSection = MultiSection()
    tracking: TrackingSection = TrackingSection()
    promote: PromoteSection = PromoteSection()
    tasks: str | None = setting(None, help="the folder holding <task>/task.yaml folders of the user's own tasks")
    orders: tuple[tuple[str, ...], ...] | dict[str, int] | None = setting(
        None,
        help="a protocol (sequential only): several task orders, each a permutation of the sequence's tasks, or "
        "{random: n, seed: s}; with `seeds`, several training seeds (finetune.seed of each chain). Each (order, "
        "seed) is a run.",
    )
    seeds: tuple[int, ...] | None = setting(None, help="a protocol's training seeds (see `orders`)")


def params_schema() -> dict:
    """The JSON schema of params.yaml (`recall params schema`; schemas/params.schema.json)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "recall params.yaml",
        "description": "A run of the recall pipeline (README: params.yaml). `recall params check` checks the rest.",
        **{k: v for k, v in Sections.schema().items() if k != "title"},
    }
