import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Stage and CLI processes the tests start: one thread each, so two test workers share the two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import helpers  # noqa: E402
import prefect.main  # noqa: E402, F401
import torch  # noqa: E402
from helpers import tiny_model  # noqa: E402

from recall.tasks.generated import generate_suite  # noqa: E402

# Prefect sets up logging (logging.config.dictConfig) when prefect.main is first imported, closing every
# logging handler alive then: were that mid-session, a handler that OpenCompass's libraries opened on
# pytest's captured stderr in an earlier test would close pytest's own stream ("lost sys.stderr").
# Imported above, before any test runs.

# Tiny models' matmuls lose to thread synchronisation; on a busy 2-core machine by 5-20x.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# The params files the project ships (relative to ROOT), found so that a new scenario cannot be missed.
SHIPPED_PARAMS = ["params.yaml", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("benchmarks/*/*/params.yaml"))]


def pytest_collection_modifyitems(items):
    """The long end-to-end groups (`xdist_group`) first: under `pytest -n 2 --dist loadgroup`
    (scripts/test.sh) each starts on a worker of its own while the other tests fill the other."""
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)


@pytest.fixture(scope="session")
def built_models(tmp_path_factory) -> dict[str, Path]:
    """Each distinct tiny model, built once per session (keyed by its tiny_model arguments)."""
    return {"": tmp_path_factory.mktemp("built_models")}


@pytest.fixture
def make_model(tmp_path, built_models):
    """A tiny random model folder of the test's own: make_model("a", family="llama", seed=1, ...).
    Built once per session for each set of arguments and copied, so a test may change its copy."""

    def make(name: str = "m", **kwargs) -> Path:
        key = json.dumps(kwargs, sort_keys=True)
        if key not in built_models:
            built_models[key] = tiny_model(built_models[""] / str(len(built_models)), **kwargs)
        return Path(shutil.copytree(built_models[key], tmp_path / name, dirs_exist_ok=True))

    return make


@pytest.fixture
def task_data(tmp_path) -> Path:
    """A small prompt/response JSONL file."""
    rows = [
        {
            "prompt": f"Statement: the film number {i} was {'great' if i % 2 else 'dull'}. Sentiment?",
            "response": "positive" if i % 2 else "negative",
        }
        for i in range(12)
    ] + [{"text": "The cat is on the table."}, {"text": "Le chat est sur la table."}]
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(autouse=True)
def task_registry(monkeypatch):
    """Each test starts from the built-in tasks only: tasks a test declares leave with it."""
    from recall.tasks import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


# A fine-tuning test module's shared inputs: one tiny base and one generated suite per module.
@pytest.fixture(scope="module")
def work(tmp_path_factory, request) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def base(work) -> Path:
    return tiny_model(work / "base", layers=2, hidden=32, initializer_range=0.2)


@pytest.fixture(scope="module")
def data(work) -> Path:
    generate_suite(work / "data", seed=0, train=64, test=8)
    return work / "data"


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, its schema migrated once per session (seconds each time): a test
    that needs a store of its own copies this file."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates the schema
    return path


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """One Prefect server for all stage processes of a test module, as scripts/services.sh starts it."""
    proc, env = helpers.prefect_server(tmp_path_factory.mktemp("prefect"))
    yield env
    proc.terminate()
    proc.wait(30)
