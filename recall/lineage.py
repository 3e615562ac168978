"""Lineage of a model folder: which models, with which per-layer weights, on which data and commit.

Read from the artifacts themselves (merge_weights.json of merged models, train_metrics.json of
fine-tuned ones) and, when the model is registered in MLflow, from its version's tags.
"""

from __future__ import annotations

from pathlib import Path

from recall.atomic import read_json
from recall.errors import RecallError
from recall.hashing import sha256_file, sha256_tree


def describe_node(folder: Path) -> tuple[str, list[str], list[Path]]:
    """(headline, detail lines, parent folders) of one model folder."""
    if (folder / "merge_weights.json").is_file():
        record = read_json(folder / "merge_weights.json")
        digest = sha256_file(folder / "merge_weights.json")[:12]
        lines = [f"weights sha256 {digest}, {len(record['layers'])} layer groups"]
        for q, model in enumerate(record["models"]):
            column = [row[q] for row in record["layers"]]
            lines.append(
                f"w[{Path(model).name}]: first {column[0]:.3f}, last {column[-1]:.3f}, "
                f"min {min(column):.3f}, max {max(column):.3f}"
            )
        if record.get("probe"):
            lines.append(f"typical samples {record.get('typical')} of {record['probe']}")
        if record.get("similarity_metric"):
            lines.append(f"similarity {record['similarity_metric']}, settings {record.get('settings')}")
        chain = f", {record['chain']} chain" if record.get("chain") else ""
        return f"merged ({record['method']}{chain})", lines, [Path(m) for m in record["models"]]
    if (folder / "train_metrics.json").is_file():
        m = read_json(folder / "train_metrics.json")
        data = Path(m["data_dir"]) / m["task"] if m.get("data_dir") else None
        lines = [f"{m['examples']} examples, {m['train_tokens']} tokens, final loss {m['final_loss']:.4f}"]
        if data and data.is_dir():
            lines.append(f"data {data} (sha256 {sha256_tree(data)[:12]})")
        return f"fine-tuned on {m['task']}", lines, [Path(m["base"])]
    return "base model", [], []


def made_from(version) -> Path:
    """The model folder an MLflow model version was registered from: its `folder` tag (the source is
    a copy in MLflow's artifact store), or its source for versions registered before that tag."""
    return Path(version.tags.get("folder", version.source))


def registry_tags(folder: Path) -> dict[str, str]:
    """Tags of the MLflow model version made from this folder, if any."""
    import mlflow

    try:
        client = mlflow.MlflowClient()
        for version in client.search_model_versions(max_results=1000):
            if made_from(version) == folder.resolve():
                return {"registered": f"{version.name}/{version.version}", **version.tags}
    except Exception:  # no tracking store here: the files alone still tell the lineage
        return {}
    return {}


def lineage(folder: str | Path, prefix: str = "", seen: set | None = None) -> list[str]:
    """Lines of the ancestor tree of `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RecallError(f"{folder} is not a model folder")
    seen = set() if seen is None else seen
    headline, details, parents = describe_node(folder)
    tags = registry_tags(folder)
    if tags:
        details.append(", ".join(f"{k}={tags[k]}" for k in ("registered", "git_commit", "dvc_stage") if k in tags))
    lines = [f"{folder}  [{headline}]"] + [f"{prefix}    {d}" for d in details]
    if folder.resolve() in seen:
        return lines
    seen.add(folder.resolve())
    for i, parent in enumerate(parents):
        last = i == len(parents) - 1
        sub = (
            lineage(parent, prefix + ("    " if last else "│   "), seen)
            if parent.is_dir()
            else [f"{parent}  [missing]"]
        )
        lines.append(f"{prefix}{'└── ' if last else '├── '}{sub[0]}")
        lines.extend(sub[1:])
    return lines


def resolve_model(spec: str) -> Path:
    """A model folder, or a registered model `name/version` or `name@alias` (either after `models:/`)."""
    return made_from(registered(spec)) if not Path(spec).is_dir() else Path(spec)


def registered(spec: str):
    """The MLflow model version `spec` names: `[models:/]name/version` or `[models:/]name@alias`."""
    name, at, alias = spec.removeprefix("models:/").partition("@")
    if not at:
        name, _, alias = name.rpartition("/")
    if not name or not alias or not (at or alias.isdigit()):
        raise RecallError(
            f"{spec} is neither a model folder nor a registered model NAME/VERSION or NAME@ALIAS "
            "(e.g. models:/recall-merged@champion)"
        )
    import mlflow

    client = mlflow.MlflowClient()
    try:
        return client.get_model_version_by_alias(name, alias) if at else client.get_model_version(name, alias)
    except mlflow.exceptions.MlflowException as err:
        what = f"alias {alias}" if at else f"version {alias}"
        raise RecallError(
            f"registered model {name} {what} not found in {mlflow.get_tracking_uri()}: {err.message}"
        ) from None
