"""`recall merge`: merge models with a registered method."""

from __future__ import annotations

import argparse
from pathlib import Path

from recall.errors import RecallError
from recall.merge.engine import MergePlan, merge
from recall.merge.methods import METHODS, get_method
from recall.models import check_compatible, describe
from recall.recall_weights import RecallSettings, recall_weights
from recall.weights import uniform_weights


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge models layer by layer", description=__doc__)
    p.add_argument("--method", required=True, choices=sorted(METHODS), help="merge method")
    p.add_argument("--models", nargs="+", required=True, help="models to merge: HF folders, LoRA adapters, .gguf, hub ids")
    p.add_argument("--out", required=True, type=Path, help="output HF model folder")
    p.add_argument("--base", help="the base model (for LoRA adapters and delta-space methods)")
    p.add_argument("--weights", nargs="+", type=float, help="one weight per model (default: uniform)")
    g = p.add_argument_group("recall")
    g.add_argument("--new", help="the newly fine-tuned model (default: the last of --models)")
    g.add_argument("--data", nargs="+", type=Path, help="JSONL task data: one file, or one per --experts model")
    g.add_argument("--experts", nargs="+", help="multi-expert mode: reference models, each with its --data file")
    g.add_argument("--typical", type=int, default=20, help="typical samples per layer (KMeans k)")
    g.add_argument("--similarity", default="rbf", help="rbf, cosine, euclidean, cka, mmd or dot")
    g.add_argument("--sigma", type=float, default=1.0, help="RBF/MMD bandwidth")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature")
    g.add_argument("--batch-size", type=int, default=8, help="feature extraction batch size")
    g.add_argument("--max-length", type=int, default=512, help="tokens per sample for feature extraction")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workdir", type=Path, help="keep extracted features here (default: a temporary folder)")
    p.set_defaults(func=run)


def _index(models: list[str], spec: str, flag: str) -> int:
    if spec not in models:
        raise RecallError(f"{flag} {spec} is not one of --models; list it there too")
    return models.index(spec)


def run(args: argparse.Namespace) -> int:
    method = get_method(args.method)
    infos = [describe(m, args.base) for m in args.models]
    base = describe(args.base) if args.base else None
    check_compatible(infos + ([base] if base else []))  # before any weight or feature work
    n_groups = infos[0].num_layers + 1
    extra = {}
    if method.layer_weights:
        experts = args.experts or [args.new or args.models[-1]]
        if not args.data or len(args.data) != len(experts):
            raise RecallError(f"--method {method.name} needs --data: one JSONL file per reference model ({len(experts)})")
        settings = RecallSettings(args.typical, args.similarity, args.sigma, args.temperature,
                                  args.batch_size, args.max_length, args.seed)
        settings.validate()
        references = [(_index(args.models, e, "--experts/--new"), d) for e, d in zip(experts, args.data)]
        weights, extra = recall_weights(infos, references, settings, args.workdir)
    else:
        w = args.weights or [1.0 / len(infos)] * len(infos)
        if len(w) != len(infos):
            raise RecallError(f"--weights has {len(w)} values for {len(infos)} models; give one per model")
        weights = uniform_weights(n_groups, w)
    reference = _index(args.models, args.new or args.models[-1], "--new")
    out = merge(MergePlan(infos, method, weights, base, reference=reference, extra=extra), args.out)
    print(f"merged model: {out}")
    return 0
