"""Issue 14.3, SAD's rank selection (the seed's phase 2): `peft.lora_r=auto` picks r by the energy rule on the
teacher's data-weighted spectrum (pooled or per layer → peft's rank_pattern), checked against numpy on the
calibration rows; the picked ranks reach the built layers, the SAD targets, MLflow and a reloaded adapter."""

from __future__ import annotations

import copy
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel

from lowrank_lab.adapters import LoraSpec, adapted_modules, wrap
from lowrank_lab.adapters.init import Initializer
from lowrank_lab.adapters.init.spectral import SpectralInit
from lowrank_lab.adapters.rank import rank_facts, resolve_auto_rank
from lowrank_lab.errors import LabError
from lowrank_lab.methods.sad import SADModule
from lowrank_lab.models.backbone import Backbone
from lowrank_lab.spectral.rank import pooled_energy_rank
from lowrank_lab.teachers.load import weight_delta
from lowrank_lab.teachers.module import Teacher
from tests.conftest import mlflow_runs, run_cli
from tests.test_kd import TARGETS, batch, fake_datamodule, task, tiny_bert
from tests.test_spectral_init import calibration_rows

N_CALIB = 100  # > d_in = 32: the whole data-weighted spectrum (32 values per layer)


def shaped_teacher(base: torch.nn.Module) -> Teacher:
    """A teacher whose i-th adapted layer moved by a rank-(i+1) update (+ small noise): distinct spectra per layer."""
    g = torch.Generator().manual_seed(7)
    model = copy.deepcopy(base)
    names = [n for n, _ in base.named_modules() if n.endswith(tuple(TARGETS))]
    with torch.no_grad():
        for i, name in enumerate(names):
            w = model.get_submodule(name).weight  # (d_out, d_in)
            k = 1 + 2 * i
            update = torch.randn(w.shape[0], k, generator=g) @ torch.randn(k, w.shape[1], generator=g)
            w += 0.05 * update + 0.002 * torch.randn(w.shape, generator=g)
    return Teacher(model, delta=weight_delta(model, base, names))


def numpy_spectra(teacher: Teacher, datamodule) -> dict[str, np.ndarray]:
    """σ(ΔW Σ^{1/2}) per layer = σ(ΔW xᵀ/√n) from the calibration rows, in float64 numpy."""
    rows = calibration_rows(teacher, datamodule, N_CALIB)
    out = {}
    for name, dw in teacher.delta.items():
        x = rows[name].numpy()
        out[name] = np.linalg.svd(dw.double().numpy() @ x.T / np.sqrt(x.shape[0]), compute_uv=False)
    return out


def brute_energy_rank(energies: list[np.ndarray], tau: float) -> int:
    """Smallest k with Σ_l cumsum(σ_l²)[k-1] ≥ τ·Σ_l Σσ_l², by scanning every k."""
    width = max(e.size for e in energies)
    cum = sum(np.concatenate([np.cumsum(e**2), np.full(width - e.size, np.sum(e**2))]) for e in energies)
    return next(k for k in range(1, width + 1) if cum[k - 1] >= tau * cum[-1])


def test_pooled_energy_rule_on_a_known_spectrum() -> None:
    spectra = [np.array([4.0, 2.0, 1.0, 0.5]), np.array([3.0, 3.0, 0.1]), np.array([1.0])]
    for tau in (0.1, 0.5, 0.8, 0.9, 0.95, 0.999, 1.0):
        got = pooled_energy_rank([torch.tensor(s[::-1].copy()) for s in spectra], tau)
        assert got == brute_energy_rank(spectra, tau), tau
    assert pooled_energy_rank([torch.zeros(3)]) == 0


@pytest.mark.parametrize("per_layer", [False, True], ids=["pooled", "per-layer"])
@pytest.mark.parametrize("tau", [0.5, 0.9, 0.99])
def test_pick_ranks_is_the_energy_rule_on_the_data_weighted_spectrum(per_layer: bool, tau: float) -> None:
    base = tiny_bert()
    teacher, dm = shaped_teacher(base), fake_datamodule(num_batches=8)
    picked = SpectralInit(n_calib=N_CALIB, rank_energy=tau, rank_per_layer=per_layer).pick_ranks(teacher, dm)
    spectra = numpy_spectra(teacher, dm)
    if per_layer:
        assert picked == {name: brute_energy_rank([s], tau) for name, s in spectra.items()}
    else:
        assert set(picked) == set(spectra) and set(picked.values()) == {brute_energy_rank(list(spectra.values()), tau)}


def test_per_layer_ranks_reach_peft_the_sad_targets_and_a_reload(tmp_path: Path) -> None:
    base = tiny_bert()
    teacher, dm = shaped_teacher(base), fake_datamodule(num_batches=8)
    init = SpectralInit(n_calib=N_CALIB, rank_energy=0.9, rank_per_layer=True)
    spec = LoraSpec(lora_r="auto", lora_alpha="auto", target_modules=TARGETS)
    spec = resolve_auto_rank(spec, init, teacher, dm)
    pattern = spec.rank_pattern
    assert len(set(pattern.values())) > 1 and spec.lora_r == max(pattern.values())
    model = wrap(Backbone(copy.deepcopy(base), "tiny", None, "seq_cls", True, TARGETS), spec, init)
    init.apply(model, datamodule=dm, teacher=teacher)
    layers = adapted_modules(model)
    assert model.peft_config["default"].rank_pattern == pattern
    for name, layer in layers.items():
        r = pattern[name.removeprefix("base_model.model.")]
        assert layer.r["default"] == r and layer.lora_B["default"].weight.shape[1] == r
        assert layer.scaling["default"] == 1.0  # lora_alpha: auto follows each layer's rank
        B = layer.lora_B["default"].weight
        torch.testing.assert_close(B.T @ B, torch.eye(r), atol=1e-5, rtol=0)  # B = U_r of its own layer
    metrics, params = rank_facts(spec, model)
    assert metrics == {"adapter/total_rank": float(sum(pattern.values()))}
    assert json.loads(params["adapter.rank_pattern"]) == pattern

    # SAD: targets computed at the widest rank, each layer keeps its own r (U_r, σ(U_rᵀ ΔW_T))
    sad = SADModule(student=model, task=task(), optimizer=partial(torch.optim.AdamW, lr=1e-2), teacher=teacher)
    sad.attach_targets(teacher.targets(dm, sad.target_rank(), N_CALIB))
    for name, _, _, _, target in sad.spectral_pairs():
        tname = name.removeprefix("base_model.model.")
        U = target.u_target
        assert U.shape[1] == pattern[tname] == target.sigma_target.numel() == target.sigma_weighted.numel()
        expected = torch.linalg.svdvals(U.double().T @ teacher.delta[tname].double()).float()
        torch.testing.assert_close(target.sigma_target, expected, rtol=1e-5, atol=1e-6)

    # the saved adapter reloads through peft alone, with each layer's rank and the same logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter").eval()
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model.eval()(**inputs).logits)
    assert {n: m.r["default"] for n, m in adapted_modules(reloaded).items()} == {
        n: m.r["default"] for n, m in layers.items()
    }


def test_auto_rank_needs_an_init_that_picks_it() -> None:
    spec = LoraSpec(lora_r="auto", lora_alpha="auto", target_modules=TARGETS)
    with pytest.raises(LabError) as err:
        resolve_auto_rank(spec, Initializer(), None, None)
    text = str(err.value)
    assert "\n" not in text and "peft.lora_r" in text and "'auto'" in text and "init=spectral" in text
    with pytest.raises(LabError, match="peft.lora_r"):
        LoraSpec(lora_r="eight")
    with pytest.raises(LabError, match="peft.lora_alpha"):
        LoraSpec(lora_r=8, lora_alpha="auto")


SMALL = [
    "model=tiny-bert",
    "trainer=debug",
    "threads=1",
    "data.train_limit=64",
    "data.val_limit=32",
    "data.max_length=32",
]


def test_auto_rank_with_the_default_init_fails_in_one_line(tmp_path: Path) -> None:
    proc = run_cli(["peft.lora_r=auto", "init=default", *SMALL], tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "peft.lora_r" in errors[0] and "'auto'" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sad_sweep_with_auto_rank_logs_groups_and_reloads(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lowrank_lab.tracking import tables
    from lowrank_lab.tracking.results import default_group_by, load_sweep

    teacher = ["method.teacher.max_steps=3", "method.teacher.require_better_than_majority=false"]
    args = ["-m", "method=sad", "peft.lora_r=auto,8", "init.rank_per_layer=true", "save.merged=true"]
    proc = run_cli([*args, *teacher, *SMALL], tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    children = [r for r in mlflow_runs(tmp_path) if "mlflow.parentRunId" in r.data.tags]
    by_rank = {r.data.tags["override.peft.lora_r"]: r for r in children}
    assert set(by_rank) == {"auto", "8"} and all(r.info.status == "FINISHED" for r in children)
    auto, fixed = by_rank["auto"], by_rank["8"]
    pattern = json.loads(auto.data.params["adapter.rank_pattern"])
    assert len(pattern) == 4 and all(1 <= r <= 32 for r in pattern.values())  # q, v of 2 layers, width 32
    assert auto.data.metrics["adapter/total_rank"] == sum(pattern.values())
    assert "adapter/total_rank" not in fixed.data.metrics and "adapter.rank_pattern" not in fixed.data.params
    assert "train/align" in auto.data.metrics

    # a report groups by the rank, 'auto' next to 8
    sweep = load_sweep(None, f"sqlite:///{tmp_path / 'mlflow.db'}")
    group_by = default_group_by(sweep.finished)
    assert "peft.lora_r" in group_by
    summary = tables.summarize(tables.run_values(sweep, group_by), group_by)
    assert list(summary["peft.lora_r"]) == ["8", "auto"]

    # the saved adapter reloads with PeftModel.from_pretrained: each layer's rank, the merged model's logits
    job_dir = Path(auto.data.tags["job_dir"])
    student = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(job_dir / "base"),
                                        job_dir / "adapter").eval()  # fmt: skip
    ranks = {n.removeprefix("base_model.model."): m.r["default"] for n, m in adapted_modules(student).items()}
    assert ranks == pattern
    merged = AutoModelForSequenceClassification.from_pretrained(job_dir / "merged").eval()
    tok = AutoTokenizer.from_pretrained(job_dir / "merged")
    inputs = tok(["a fine film", "a dull and tedious mess"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(student(**inputs).logits, merged(**inputs).logits, rtol=1e-4, atol=1e-5)


def test_a_rank_pattern_is_checked_layer_by_layer() -> None:
    layers = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 3))
    LoraSpec(lora_r=5, target_modules=["0", "1"], rank_pattern={"0": 5, "1": 3}).check(
        dict(layers.named_children()), None
    )
    with pytest.raises(LabError, match="at most 3, the smallest dimension of the adapted layer 1"):
        LoraSpec(lora_r=5, target_modules=["0", "1"], rank_pattern={"0": 2, "1": 4}).check(
            dict(layers.named_children()), None
        )
