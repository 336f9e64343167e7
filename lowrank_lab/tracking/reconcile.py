"""No RUNNING MLflow run outlives its process: runs this process holds are closed FAILED on SIGTERM/SIGHUP and at
exit, and `reconcile` closes FAILED every RUNNING run whose process (pid on this host, recorded as tags) is gone."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

PID_TAG, HOST_TAG = "lowrank_lab.pid", "lowrank_lab.host"
SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # exit 128 + signum: 143, 129
_HELD: dict[str, str] = {}  # run id -> tracking URI: runs this process opened and has not closed yet
_PREVIOUS: dict[int, Any] = {}  # signum -> the handler ours replaced (called first: we chain, never swallow)
ON_SIGNAL: list[Callable[[int], None]] = []  # run before exiting on a signal (the sweep forwards it to its jobs)
_installed = False


def process_tags() -> dict[str, str]:
    """Tags a run gets when it is created (or resumed): which process on which host owns it."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def hold(tracking_uri: str, run_id: str) -> None:
    """This process owns `run_id` until `release`: a signal or an exit before that closes it FAILED."""
    _HELD[run_id] = tracking_uri
    _install()


def release(run_id: str) -> None:
    _HELD.pop(run_id, None)


def close_held(status: str = "FAILED") -> None:
    """Close every run this process still holds (those still RUNNING in the store) with `status`."""
    from mlflow.tracking import MlflowClient

    for run_id, uri in list(_HELD.items()):
        release(run_id)
        try:
            client = MlflowClient(uri)
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, status)
        except Exception as err:  # the store is gone or locked: `reconcile` closes it later
            print(f"warning: MLflow run {run_id} left RUNNING ({type(err).__name__}: {err})", file=sys.stderr)


def _install() -> None:
    """Once per process: our handler for SIGTERM/SIGHUP (not where the signal is ignored, e.g. SIGHUP under nohup)
    and an atexit hook. Signal handlers can only be set from the main thread; elsewhere atexit still closes."""
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(close_held, "FAILED")
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        previous = signal.getsignal(signum)
        if previous is signal.SIG_IGN or previous is _on_signal:
            continue
        _PREVIOUS[signum] = previous
        signal.signal(signum, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Chain to the previous handler, then exit 128 + signum by raising SystemExit: `finally` blocks (train.py's
    finish_job_run) close the job's run FAILED on the way out, atexit closes what is left (the sweep's run)."""
    if signal.getsignal(signum) is not _on_signal:
        return  # a handler that wraps ours is installed (Lightning's during fit): it stops the job at the next step
    previous = _PREVIOUS.get(signum)
    if callable(previous):
        previous(signum, frame)
    for hook in list(ON_SIGNAL):
        try:
            hook(signum)
        except Exception as err:  # never let a hook keep the process alive
            print(f"warning: on signal {signum}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def alive(pid: int) -> bool:
    """Whether process `pid` exists on this host and is not a zombie (killed, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def orphaned(tags: dict[str, str], host: str | None = None) -> bool:
    """A run whose recorded process ran on this host and no longer exists; runs from other hosts (SLURM nodes)
    or without the tags (older runs) are never judged."""
    pid = tags.get(PID_TAG, "")
    return tags.get(HOST_TAG) == (host or socket.gethostname()) and pid.isdigit() and not alive(int(pid))


def running_runs(client: Any, filter_string: str = "") -> list[Any]:
    """Every RUNNING run of every experiment in the store (all pages)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    where = "attributes.status = 'RUNNING'" + (f" and {filter_string}" if filter_string else "")
    runs: list[Any] = []
    token = None
    while experiments:
        page = client.search_runs(experiments, filter_string=where, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def reconcile(tracking_uri: str, filter_string: str = "") -> list[str]:
    """Mark FAILED every RUNNING run whose process is gone; return their ids."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    closed = []
    for run in running_runs(client, filter_string):
        if orphaned(run.data.tags):
            client.set_terminated(run.info.run_id, "FAILED")
            client.set_tag(run.info.run_id, "lowrank_lab.reconciled", "process gone")
            closed.append(run.info.run_id)
    return closed


def main(argv: list[str] | None = None) -> int:
    """`python -m lowrank_lab.tracking reconcile [--tracking-uri URI]`."""
    import argparse
    from pathlib import Path

    default = f"sqlite:///{Path(__file__).resolve().parents[2] / 'outputs' / 'mlflow.db'}"
    parser = argparse.ArgumentParser(prog="python -m lowrank_lab.tracking reconcile", description=__doc__)
    parser.add_argument("--tracking-uri", default=default, help=f"the MLflow store (default {default})")
    args = parser.parse_args(argv)
    uri = args.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        print(f"error: --tracking-uri={uri!r}: no MLflow store there; pass an existing store", file=sys.stderr)
        return 2
    closed = reconcile(uri)
    print(f"reconcile: {len(closed)} RUNNING run(s) whose process is gone marked FAILED", flush=True)
    for run_id in closed:
        print(f"  {run_id}")
    return 0
