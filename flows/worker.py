"""A warm stage worker: one process that has imported what stages use (torch, transformers, peft,
scikit-learn, Prefect, MLflow, recall) forks a child per stage, so each of a run's stage processes
skips its ~4 s of imports.

    python -m flows.worker SOCKET      # scripts/services.sh starts one and exports RECALL_STAGE_WORKER=SOCKET

`python -m flows.stage` (what DVC runs) hands its arguments, working directory, environment and
standard streams to the worker RECALL_STAGE_WORKER names and exits with the child's status. It runs the
stage itself when no worker answers, or when the worker refuses it: another Python or checkout, or an
environment that differs in more than the variables DVC sets per stage (the worker's imports read
the environment, e.g. OMP_NUM_THREADS, PREFECT_API_URL).

The child is the stage process in all but its pid: the client's streams, directory and environment,
its own process group, and every SIGTERM, SIGINT or SIGHUP the client gets (cancelling, Ctrl-C); a
client that dies takes its child with it (SIGKILL), as if the stage process itself had been killed.
Each child exits when its stage ends, so memory is returned between stages, and concurrent stages get a
child each. The worker exits when its parent does.

The socket sits in a folder only its user can enter (mkdtemp, mode 0700), and a client can ask for
nothing but what `python -m flows.stage` with the same environment would do.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ADDRESS = "RECALL_STAGE_WORKER"
# What stages import beyond flows.stage_flow; a module missed here is imported by the child itself.
PRELOAD = (
    "flows.stage_flow",
    "recall.pipeline.stages",
    "recall.evaluation.pipeline",
    "recall.reporting.report",
    "recall.gate",
    "recall.weights.cocktail",
    "recall.weights.fisher",
    "sklearn.cluster",
    "mlflow.store.tracking.sqlalchemy_store",
    "peft",
    "transformers.models.llama.modeling_llama",
)
PER_STAGE = ("PWD", "OLDPWD", "SHLVL", "_")  # a shell's bookkeeping; DVC_* are DVC's per-stage variables
STREAMS = (0, 1, 2)
HEADER = struct.Struct("!I")
FIRST_REPLY_S = 120.0  # a worker still importing answers within this; else the client runs the stage itself


def identity() -> dict:
    """What a client and the worker must share for the worker's imports to be the client's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_") and k not in PER_STAGE}
    code = [str(Path(__file__).resolve().parent), importlib.util.find_spec("recall").origin]
    return {"python": sys.executable, "code": code, "env": env}


# ---- the client: python -m flows.stage


def hand_off(argv: list[str]) -> int | None:
    """Run the stage in the worker's child and return its exit status; None: no worker took it."""
    address = os.environ.get(ADDRESS)
    if not address:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(address)
        request = json.dumps({**identity(), "argv": argv, "cwd": os.getcwd(), "full_env": dict(os.environ)})
        payload = HEADER.pack(len(request)) + request.encode()
        socket.send_fds(conn, [payload[:1]], list(STREAMS))
        conn.sendall(payload[1:])
        conn.settimeout(FIRST_REPLY_S)
        replies = conn.makefile("rb")
        first = replies.readline().decode().split(maxsplit=1)
    except OSError:  # no worker (yet), or it went away: run here
        conn.close()
        return None
    if first[:1] != ["pid"]:
        conn.close()
        if first[:1] == ["refused"]:
            print(f"recall stage: running here, not in the stage worker: {first[1].strip()}", file=sys.stderr)
        return None
    pid = int(first[1])

    def forward(signum: int, frame) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    conn.settimeout(None)
    last = replies.readline().decode().split()
    conn.close()
    if last[:1] == ["exit"]:
        return int(last[1])
    print("recall stage: error: the stage worker stopped before the stage ended; rerun the stage", file=sys.stderr)
    return 1


# ---- the worker


@contextmanager
def started(env: dict) -> Iterator[tuple[subprocess.Popen, dict]]:
    """A worker with environment `env` while the block runs: the process, and the environment (`env`
    with RECALL_STAGE_WORKER) whose stage processes it serves. scripts/services.sh does the same in bash."""
    folder = tempfile.mkdtemp(prefix="recall-worker-")  # short: a socket's path has at most 107 bytes
    served = {**env, ADDRESS: f"{folder}/stage.sock"}
    code = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "flows.worker", served[ADDRESS]], cwd=code, env=served)
    try:
        while not Path(served[ADDRESS]).exists() and proc.poll() is None:  # then a client waits for its imports
            time.sleep(0.02)
        yield proc, served
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


_warm_lock = threading.Lock()
_warm_workers = ExitStack()  # closed when this process exits (a worker also exits with its parent)
_warm_envs: dict[tuple, dict] = {}
atexit.register(_warm_workers.close)


def warm(env: dict) -> dict:
    """`env` with a warm stage worker for it, started on the first stage this process runs in that
    environment and kept for the process's life: for flows/continual.py's stages, the flow's process
    (sequential runner) or each Dask worker's, on whichever machine it runs. A worker named already
    (as scripts/services.sh does) is used as it is; RECALL_STAGE_WORKER set empty: none."""
    if ADDRESS in env:
        return env
    with _warm_lock:
        key = tuple(sorted(env.items()))
        if key not in _warm_envs:
            _warm_envs[key] = _warm_workers.enter_context(started(env))[1]
        return _warm_envs[key]


def receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """A client's request and its standard streams (closed again if the request is not whole)."""
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, len(STREAMS))
    try:
        while len(data) < HEADER.size or len(data) < HEADER.size + HEADER.unpack_from(data)[0]:
            more = conn.recv(1 << 16)
            if not more:
                raise ConnectionError("the client left before its request was whole")
            data += more
        return json.loads(data[HEADER.size :]), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def gone(conn: socket.socket) -> bool:
    """The client closed its end (a client sends nothing after its request)."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def refusal(request: dict, fds: list[int], mine: dict) -> str | None:
    if len(fds) != len(STREAMS):
        return "its standard streams did not arrive"
    if request["python"] != mine["python"] or request["code"] != mine["code"]:
        return f"the worker runs {mine['python']} on {mine['code']}"
    theirs, ours = request["env"], mine["env"]
    different = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
    if different:
        return f"its environment differs from the worker's in {', '.join(different[:5])}"
    return None


def become_stage(request: dict, fds: list[int], inherited: list, imports_set: dict) -> None:
    """In the forked child: take the client's place, run the stage, exit with its status."""
    for resource in inherited:
        resource.close()
    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the client only, which forwards it once
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    for target, fd in zip(STREAMS, fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout.reconfigure(line_buffering=os.isatty(1))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update({**request["full_env"], **imports_set})
    sys.argv = [sys.argv[0], *request["argv"]]
    from flows import stage_flow
    from recall.errors import end_process

    end_process(stage_flow.main(request["argv"]))  # as `python -m flows.stage` ends


def stopped(signum: int, frame) -> None:
    """SIGTERM: exit, once. A second one (a process group's TERM after the worker's own) is ignored: raised
    inside the exit's atexit handlers (torch's, say) it printed a traceback and cut them short."""
    signal.signal(signum, signal.SIG_IGN)
    sys.exit(128 + signum)


def serve(listener: socket.socket) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the clients' to forward
    signal.signal(signal.SIGTERM, stopped)
    parent = os.getppid()
    mine = identity()  # the environment the imports read, before they add to it
    before = dict(os.environ)
    for module in PRELOAD:
        try:
            __import__(module)
        except Exception as err:  # the stages that need it will say what is wrong
            print(f"flows.worker: did not preload {module} ({type(err).__name__}: {err})", file=sys.stderr)
    imports_set = {k: v for k, v in os.environ.items() if before.get(k) != v}  # e.g. KMP_INIT_AT_FORK
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    clients: dict[int, tuple[socket.socket, int]] = {}  # child pid -> (its client's connection, pidfd)

    def start(conn: socket.socket) -> None:
        conn.settimeout(10)  # a client sends its request at once; one that does not must not stall the others
        try:
            request, fds = receive(conn)
        except (OSError, ValueError):
            conn.close()
            return
        conn.settimeout(None)
        reason = refusal(request, fds, mine)
        if reason is None and gone(conn):  # it waited too long for these imports and ran the stage itself
            reason = "the client left"
        pid = None
        if reason is None:
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as err:
                reason = f"the worker could not fork ({err.strerror})"
        if pid == 0:
            inherited = [listener, selector, conn, *(c for c, _ in clients.values())]
            become_stage(request, fds, inherited, imports_set)
        for fd in fds:
            os.close(fd)
        if pid is None:
            try:
                conn.sendall(f"refused {reason}\n".encode())
            except OSError:
                pass
            conn.close()
            return
        pidfd = os.pidfd_open(pid)
        clients[pid] = (conn, pidfd)
        selector.register(pidfd, selectors.EVENT_READ, ("ended", pid))
        selector.register(conn, selectors.EVENT_READ, ("left", pid))
        try:
            conn.sendall(f"pid {pid}\n".encode())
        except OSError:  # gone already: seen as "left" next
            pass

    def finish(pid: int, status: int | None) -> None:
        conn, pidfd = clients.pop(pid)
        selector.unregister(conn)
        selector.unregister(pidfd)
        os.close(pidfd)
        if status is not None:
            try:
                conn.sendall(f"exit {status}\n".encode())
            except OSError:
                pass
        conn.close()

    def kill(pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    server = os.getpid()
    try:
        while os.getppid() == parent:
            for key, _ in selector.select(timeout=1.0):
                if key.fileobj is listener:
                    start(listener.accept()[0])
                    continue
                event, pid = key.data
                if pid not in clients:  # its other event came first in this batch
                    continue
                if event == "left":
                    if not gone(key.fileobj):
                        continue
                    kill(pid)  # the client died (or was killed): so does its stage
                    os.waitpid(pid, 0)
                    finish(pid, None)
                else:
                    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                    finish(pid, code if code >= 0 else 128 - code)
    finally:
        if os.getpid() == server:  # not in a child unwinding from its stage's exit
            for pid in clients:
                kill(pid)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m flows.worker SOCKET", file=sys.stderr)
        return 2
    if not hasattr(os, "pidfd_open"):
        print("flows.worker: no stage worker (it needs Linux); each stage runs in its own process", file=sys.stderr)
        return 0
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(args[0])  # before the imports: a client that connects meanwhile waits for them
        listener.listen(64)
    except OSError as err:
        print(
            f"flows.worker: error: cannot listen on {args[0]}: {err.strerror or err}; stages run without a worker",
            file=sys.stderr,
        )
        return 1
    serve(listener)
    return 0


if __name__ == "__main__":
    sys.exit(main())
