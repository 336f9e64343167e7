"""notebooks/*.ipynb run top to bottom (nbclient, the venv's `python3` ipykernel) against MLflow stores: both on the
real small sweep (no spectral metrics: the spectral notebook says so and draws nothing), and the spectral one on a
written store with kd vs sad, spectral metrics and per-layer artifacts (every plot drawn). One kernel serves every
run (its imports happen once); each run starts with `%reset -f`, so no notebook sees another's variables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import nbformat
import pytest

from tests.conftest import REPO
from tests.sweep_fixture import Store

pytest_plugins = ["tests.sweep_fixture"]
pytestmark = pytest.mark.slow
NOTEBOOKS = REPO / "notebooks"


@pytest.fixture(scope="module")
def kernel(small_sweep: Store) -> Iterator[Any]:
    """A running `python3` kernel whose environment names the small sweep's store (LRL_TRACKING_URI) and no sweep
    (LRL_SWEEP_ID unset: the notebooks take the latest); the kernelspec is installed into the venv if missing."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        cmd = [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"]
        subprocess.run(cmd, check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "LRL_SWEEP_ID"} | {"LRL_TRACKING_URI": small_sweep.uri}
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(NOTEBOOKS))
    try:
        yield km
    finally:
        km.shutdown_kernel(now=True)


def _run(name: str, kernel: Any, **parameters: str) -> dict:
    """Execute notebooks/<name>.ipynb, `parameters` injected after its parameters cell as papermill does; its text
    output and the number of images it displayed."""
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    nb.cells[at + 1 : at + 1] = [nbformat.v4.new_code_cell(injected)] if parameters else []
    nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))
    NotebookClient(nb, km=kernel, timeout=300).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    text += "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    return {"text": text, "images": sum("image/png" in o.get("data", {}) for o in outputs)}


def test_notebooks_on_a_real_sweep(small_sweep: Store, kernel: Any) -> None:
    out = _run("compare_sweeps", kernel)  # store and sweep from the environment: the latest sweep
    assert f"store: {small_sweep.uri}" in out["text"] and small_sweep.parent_id in out["text"]
    assert "2 finished of 2 jobs" in out["text"] and "sst2 (test/accuracy)" in out["text"]  # the reported split
    assert "not a two-method comparison" in out["text"] and "experiment 'lowrank_lab' has no claim" in out["text"]
    drew = re.search(r"drew \[(.*)\]", out["text"]).group(1)  # one validation per job here: no step curve
    assert drew == "'reported_by_seed'" and out["images"] == 1

    out = _run("spectral_analysis", kernel, SWEEP=small_sweep.parent_id)
    assert "0 of 2 finished jobs logged spectral/* metrics" in out["text"] and "nothing to analyse" in out["text"]
    assert "no spectral metrics" in out["text"] and out["images"] == 0


def test_spectral_notebook_with_spectral_metrics(fake_sweep: Store, kernel: Any) -> None:
    out = _run("spectral_analysis", kernel, TRACKING_URI=fake_sweep.uri, SWEEP=fake_sweep.experiment)
    assert f"sweep run {fake_sweep.parent_id}" in out["text"] and "12 finished of 13 jobs" in out["text"]
    assert "12 of 12 finished jobs logged spectral/* metrics" in out["text"]
    assert "spectra shown for 2 configurations" in out["text"]
    assert out["images"] == 1 + 1 + 2  # angle history (overlap, sv_match not logged), per layer, 2 spectra
