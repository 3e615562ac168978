"""The warm stage worker (flows/worker.py): `python -m flows.stage` hands its stage to a process forked
from the worker, which already imported torch, transformers, Prefect and MLflow; real stages on a tiny
project, real Prefect server and MLflow store. Cancelling through it: test_pipeline's cancel test."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import helpers
import psutil
import pytest
from helpers import tiny_model
from test_pipeline import tiny_params, write_params

from recall.hashing import sha256_file
from recall.pipeline import layout, plan, stages
from recall.pipeline.params import load_params

FINETUNE = ["finetune", "--step", "gen_sentiment"]
CODE = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path, prefect_server):
    """A tiny project whose base and data stages ran, and the environment of its stage processes."""
    folder = tmp_path / "project"
    folder.mkdir()
    tiny_model(folder / "tiny", layers=2)
    loaded = load_params(write_params(folder, tiny_params()))
    plan.write(loaded)
    stages.base(loaded)
    stages.data(loaded)
    env = {**prefect_server, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return folder, env


def stage(folder, env, *argv, python_flags=()) -> subprocess.CompletedProcess:
    command = [sys.executable, *python_flags, "-m", "flows.stage", *argv]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def weights(folder) -> dict[str, str]:
    """{file: sha256} of the tensors a stage wrote (its other files name its project's paths)."""
    return {f.name: sha256_file(f) for f in folder.rglob("*.safetensors")}


def imported(importtime_log: str) -> set[str]:
    """Top-level packages a process imported, from its `python -X importtime` lines."""
    return {line.split("|")[-1].strip().split(".")[0] for line in importtime_log.splitlines() if "import time:" in line}


def test_a_stage_runs_in_the_workers_child_with_the_same_outputs_and_status(project, tmp_path):
    folder, env = project
    alone = tmp_path / "alone"
    shutil.copytree(folder, alone)
    assert stage(alone, env, *FINETUNE).returncode == 0  # the stage in its own process, for comparison

    with helpers.stage_worker(env) as (_, served):
        done = stage(folder, served, *FINETUNE, python_flags=["-X", "importtime"])
        assert done.returncode == 0, done.stderr[-3000:]
        # The stage ran elsewhere: the process DVC starts imported neither torch nor Prefect.
        assert {"flows", "recall"} <= imported(done.stderr)
        assert not {"torch", "transformers", "prefect", "mlflow"} & imported(done.stderr)
        assert "Finished in state Completed()" in done.stderr  # the child's log, on the client's stderr

        out = layout.new_model(load_params(folder / "params.yaml"), None, "gen_sentiment")
        made, twin = weights(out), weights(alone / out.relative_to(folder))
        assert "adapter_model.safetensors" in made and made == twin  # the same adapter, to the byte

        wrong = stage(folder, served, "finetune", "--step", "no_such_task")
        assert wrong.returncode == 2 and "no stage 'finetune-no_such_task'" in wrong.stderr
        usage = stage(folder, served, "nonsense")
        assert usage.returncode == 2 and "invalid choice: 'nonsense'" in usage.stderr


def test_a_stage_the_worker_cannot_serve_runs_in_its_own_process(project):
    """Another environment (the worker's imports read it) or a worker that is not there."""
    folder, env = project
    with helpers.stage_worker(env) as (_, served):
        other = stage(folder, {**served, "OMP_NUM_THREADS": "2"}, *FINETUNE)
        assert other.returncode == 0, other.stderr[-3000:]
        assert "running here, not in the stage worker: its environment differs" in other.stderr
        assert "OMP_NUM_THREADS" in other.stderr
    gone = stage(folder, served, "data")  # the worker stopped: its socket is gone
    assert gone.returncode == 0 and "stage worker" not in gone.stderr, gone.stderr[-3000:]


def test_a_killed_stage_process_takes_its_child_with_it(project):
    """SIGKILL to the process DVC started (a scheduler's hard limit, Prefect's retry of a crash): the
    stage stops as if that process had run it, and the worker serves the next one."""
    folder, env = project
    params = load_params(write_params(folder, tiny_params(finetune={**tiny_params()["finetune"], "max_steps": 400})))
    plan.write(params)
    with helpers.stage_worker(env) as (worker, served):
        client = subprocess.Popen(
            [sys.executable, "-m", "flows.stage", *FINETUNE], cwd=folder, env=served, stderr=subprocess.PIPE
        )
        worker_process = psutil.Process(worker.pid)
        deadline = time.monotonic() + 120
        while not worker_process.children():
            assert client.poll() is None and time.monotonic() < deadline, client.stderr.read()[-3000:]
            time.sleep(0.05)
        child = worker_process.children()[0]
        client.kill()
        client.wait()
        child.wait(timeout=30)  # gone, not orphaned
        assert not worker_process.children()
        assert not layout.new_model(params, None, "gen_sentiment").exists()
        assert stage(folder, served, "data").returncode == 0  # the worker still serves


def test_the_scripts_start_a_worker_and_stop_it_with_the_script(tmp_path):
    """scripts/services.sh, as scripts/run.sh sources it: a listening worker for the script's stage
    processes, gone with its socket folder when the script exits."""
    script = (
        "source scripts/env.sh && source scripts/services.sh && "
        'python -c "import os, socket; s = socket.socket(socket.AF_UNIX); '
        "s.connect(os.environ['RECALL_STAGE_WORKER']); print(os.environ['RECALL_STAGE_WORKER'])\""
    )
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_HOME": str(tmp_path)}
    env.pop("RECALL_STAGE_WORKER", None)
    done = subprocess.run(["bash", "-c", script], cwd=CODE, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    address = Path(done.stdout.strip().splitlines()[-1])
    assert address.name == "stage.sock" and not address.parent.exists()  # removed with the script's exit
    deadline = time.monotonic() + 30
    while any(str(address) in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])):
        assert time.monotonic() < deadline, "the worker outlived its script"
        time.sleep(0.1)


def test_a_second_sigterm_cannot_cut_the_workers_exit_short():
    from flows import worker

    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as ended:
            worker.stopped(signal.SIGTERM, None)
        assert ended.value.code == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # the next TERM lands nowhere
    finally:
        signal.signal(signal.SIGTERM, before)
