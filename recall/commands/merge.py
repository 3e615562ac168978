"""`recall merge`: merge models with a registered method.

Options are shared across methods: --data and --temperature mean the same to recall and lm_cocktail,
--density to ties and both DARE methods, --seed to recall's KMeans and DARE's masks. An option that
the chosen method does not use is an error: a setting given to the wrong method is never silently ignored.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from recall.atomic import check_output
from recall.commands import add_output, add_trust_remote_code
from recall.errors import RecallError
from recall.merge.engine import MergePlan, merge
from recall.merge.methods import METHODS, PARAMS, Method, get_method, resolve_weights
from recall.models import allow_remote_code, check_compatible, describe
from recall.weights.cocktail import CocktailSettings
from recall.weights.fisher import FisherSettings
from recall.weights.representations import RecallSettings
from recall.weights.rows import CALIBRATIONS
from recall.weights.similarity import MEDIAN, METRICS, NORMALIZATIONS
from recall.weights.sources import SOURCES, model_index


def uses(method: Method) -> set[str]:
    """Every optional setting `method` reads: its kernel parameters and its weight source's options."""
    return set(method.params) | method.source.options


def users(option: str) -> str:
    return ", ".join(m.name for m in METHODS.values() if option in uses(m))


def register(sub: argparse._SubParsersAction) -> None:
    methods = "\n".join(f"  {m.name:16} {m.help}" for m in METHODS.values())
    p = sub.add_parser(
        "merge",
        description=__doc__,
        epilog=f"methods:\n{methods}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--method", required=True, choices=sorted(METHODS), help="merge method (listed below)")
    p.add_argument(
        "--models", nargs="+", required=True, help="models to merge: HF folders, LoRA adapters, .gguf, hub ids"
    )
    add_output(p, "output HF model folder")
    add_trust_remote_code(p)
    p.add_argument("--base", help="the base model (for LoRA adapters and task-vector methods)")
    p.add_argument(
        "--allow-tokenizer-mismatch",
        action="store_true",
        help="merge models whose tokenizers differ (their token ids then mean different text)",
    )
    p.add_argument(
        "--new",
        help="the model whose config and tokenizer the output carries, and RECALL's new model "
        "(default: the last of --models)",
    )

    def add(group, option: str, help: str, **kw) -> None:
        group.add_argument(f"--{option.replace('_', '-')}", help=f"{help} [{users(option)}]", **kw)

    w = p.add_argument_group("merge weights")
    add(w, "weights", "one weight per model (default 1/N; 1 for the task-vector methods)", nargs="+", type=float)
    add(
        w,
        "data",
        "JSONL task data: recall: one file, or one per --experts model; lm_cocktail: a file per task; "
        "fisher: one file per model",
        nargs="+",
        type=Path,
    )
    add(
        w,
        "temperature",
        f"softmax temperature (default recall {RecallSettings.temperature}, "
        f"lm_cocktail {CocktailSettings.temperature})",
        type=float,
    )
    add(w, "max_length", f"tokens per sample (default {RecallSettings.max_length})", type=int)
    add(
        w,
        "examples",
        f"examples per --data file (default lm_cocktail {CocktailSettings.examples}, fisher {FisherSettings.examples})",
        type=int,
    )
    k = p.add_argument_group("method parameters")
    for name, spec in PARAMS.items():
        kw = {"action": argparse.BooleanOptionalAction} if spec.type is bool else {"type": spec.type}
        add(k, name, spec.help, **kw)
    r = p.add_argument_group("recall")
    add(r, "experts", "multi-expert mode: reference models, each with its --data file", nargs="+")
    add(
        r,
        "calibrate",
        f"the similarities before the softmax: {', '.join(CALIBRATIONS)} (default {RecallSettings.calibrate}, "
        "the paper's); zscore: each layer's differences across models in units of their spread",
    )
    add(r, "typical", f"typical samples per layer (KMeans k, default {RecallSettings.typical})", type=int)
    add(r, "similarity", f"{', '.join(METRICS)} (default {RecallSettings.similarity})")
    add(
        r,
        "sigma",
        f"RBF/MMD bandwidth: a number > 0, or {MEDIAN} for the per-layer median heuristic "
        f"(default {RecallSettings.sigma}; the paper's is 1.0)",
        type=sigma_value,
    )
    # Not --normalize: that flag is TIES's (divide by the agreeing weights); one flag, one meaning.
    add(
        r,
        "normalize_states",
        f"rescale the pooled hidden states before the similarity: {', '.join(NORMALIZATIONS)} "
        f"(default {RecallSettings.normalize})",
    )
    add(r, "batch_size", f"feature extraction batch size (default {RecallSettings.batch_size})", type=int)
    add(
        r,
        "workdir",
        "keep extracted features (recall) or Fisher folders (fisher) here (default: a temporary folder)",
        type=Path,
    )
    p.set_defaults(func=run)


def sigma_value(text: str) -> float | str:
    """--sigma's value: a number where it parses as one, else the word (RecallSettings checks both)."""
    try:
        return float(text)
    except ValueError:
        return text


def check_options(args: argparse.Namespace, method: Method) -> None:
    """Refuse options the method would ignore."""
    optional = set(PARAMS).union(*(source.options for source in SOURCES.values()))
    if unused := sorted(o for o in optional - uses(method) if getattr(args, o) is not None):
        flag = "--" + unused[0].replace("_", "-")
        raise RecallError(f"{flag} does not apply to --method {method.name}; it is used by {users(unused[0])}")


def check_request(args: argparse.Namespace, method: Method) -> None:
    """Refuse requests that cannot mean what the user wants: a copy, a model twice, output over an input."""
    inputs = [Path(m).resolve() for m in args.models]
    if len(inputs) == 1 and not method.needs_base:
        raise RecallError(f"--method {method.name} with one model would only copy it; give two or more --models")
    if twice := next((m for m, p in zip(args.models, inputs) if inputs.count(p) > 1), None):
        raise RecallError(
            f"{twice} is given twice in --models; list each model once (use --weights to weight one more)"
        )
    if args.out.resolve() in inputs + ([Path(args.base).resolve()] if args.base else []):
        raise RecallError(f"--out {args.out} is one of the input models; write the merge to a new folder")
    check_output(args.out, args.overwrite)


def run(args: argparse.Namespace) -> int:
    allow_remote_code(args.trust_remote_code)
    method = get_method(args.method)
    check_request(args, method)
    infos = [describe(m, args.base) for m in args.models]
    base = describe(args.base) if args.base else None
    # Before any weight or feature work.
    check_compatible(infos + ([base] if base else []), tokenizers=not args.allow_tokenizer_mismatch)
    check_options(args, method)
    params = method.resolve({name: getattr(args, name) for name in method.params})
    reference = model_index(args.models, args.new or args.models[-1], "--new")
    with tempfile.TemporaryDirectory(prefix="recall-fisher-") as tmp:
        # the weight source's evidence: the given weights, each reference's similarities (recall), each
        # model's loss (lm_cocktail) or Fisher (fisher)
        evidence = method.source.gather(args, method, infos, Path(tmp))
        weights = resolve_weights(method, infos, **evidence.values, params=params)
        plan = MergePlan(
            infos,
            method,
            weights,
            base,
            params,
            reference=reference,
            extra=evidence.extra,
            fisher=evidence.fisher,
            allow_tokenizer_mismatch=args.allow_tokenizer_mismatch,
        )
        out = merge(plan, args.out, overwrite=args.overwrite)
    print(f"merged model: {out}")
    return 0
