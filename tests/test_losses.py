"""lowrank_lab.losses against scipy/numpy formulas written here, gradcheck, and closed-form schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.special as ssp
import torch
from scipy.spatial.distance import cosine as cosine_distance
from scipy.spatial.distance import jensenshannon

from lowrank_lab.losses import (
    AdaptiveSchedule,
    ConstantSchedule,
    CosineDecay,
    HiddenCosine,
    JensenShannon,
    KLDivergence,
    LinearWarmup,
    LogitMSE,
    ReverseKL,
    TotalVariation,
    coefficient_loss,
    grassmann_alignment,
    kd_loss,
)


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def orthonormal(rng: np.random.Generator, d: int, r: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((d, r)))[0]


# ---------------------------------------------------------------- Grassmann alignment


@pytest.mark.parametrize("r_b,r_t", [(4, 4), (2, 5), (6, 3)])
def test_grassmann_alignment_is_sum_of_sin2_of_scipy_angles(r_b: int, r_t: int) -> None:
    rng = np.random.default_rng(r_b * 10 + r_t)
    B, U = rng.standard_normal((20, r_b)), orthonormal(rng, 20, r_t)
    ref = np.sum(np.sin(sla.subspace_angles(B, U)) ** 2)
    assert np.isclose(float(grassmann_alignment(t64(B), t64(U))), ref, atol=1e-12)
    # r − ‖Q_Bᵀ U‖²_F form
    Q = np.linalg.qr(B)[0]
    assert np.isclose(ref, min(r_b, r_t) - np.sum((Q.T @ U) ** 2), atol=1e-12)


def test_grassmann_alignment_extremes_and_scale_invariance() -> None:
    rng = np.random.default_rng(0)
    U = orthonormal(rng, 16, 4)
    mixed = U @ rng.standard_normal((4, 4))  # same span, not orthonormal
    assert float(grassmann_alignment(t64(mixed), t64(U))) < 1e-24
    eye = np.eye(16)
    assert np.isclose(float(grassmann_alignment(t64(eye[:, 4:8]), t64(eye[:, :4]))), 4.0)
    B = rng.standard_normal((16, 4))
    a = grassmann_alignment(t64(B), t64(U))
    assert np.isclose(float(grassmann_alignment(t64(1e-6 * B), t64(U))), float(a), rtol=1e-10)
    # float32 keeps precision near alignment (residual form, not r − ‖M‖²): angle 1e-4 rad -> sin² ≈ 1e-8
    w = (np.eye(16) - U @ U.T) @ rng.standard_normal(16)
    tilt = U.copy()
    tilt[:, 0] = np.cos(1e-4) * U[:, 0] + np.sin(1e-4) * w / np.linalg.norm(w)  # one angle of exactly 1e-4
    ref = np.sin(1e-4) ** 2
    assert np.isclose(np.sum(np.sin(sla.subspace_angles(tilt, U)) ** 2), ref, rtol=1e-6)
    got32 = float(grassmann_alignment(torch.from_numpy(tilt).float(), torch.from_numpy(U).float()))
    assert got32 >= 0 and abs(got32 - ref) < 0.05 * ref


@pytest.mark.parametrize("r_b,r_t", [(3, 3), (2, 4), (4, 2)])
def test_grassmann_alignment_gradcheck(r_b: int, r_t: int) -> None:
    rng = np.random.default_rng(1)
    B = t64(rng.standard_normal((9, r_b))).requires_grad_(True)
    U = t64(orthonormal(rng, 9, r_t))
    assert torch.autograd.gradcheck(lambda b: grassmann_alignment(b, U), (B,))


def test_grassmann_alignment_zero_and_rank_deficient_b() -> None:
    rng = np.random.default_rng(2)
    U = t64(orthonormal(rng, 12, 3))
    zero = torch.zeros(12, 3, dtype=torch.float64, requires_grad=True)  # LoRA step 0
    value = grassmann_alignment(zero, U)
    assert value.requires_grad and float(value) == 0.0
    value.backward()
    assert torch.equal(zero.grad, torch.zeros_like(zero))

    cols = rng.standard_normal((12, 2))
    deficient = np.column_stack([cols, cols[:, 0] - 2 * cols[:, 1]])  # rank 2
    B = t64(deficient).requires_grad_(True)
    value = grassmann_alignment(B, U)
    assert np.isclose(float(value), np.sum(np.sin(sla.subspace_angles(deficient, U.numpy())) ** 2))
    value.backward()
    assert torch.isfinite(B.grad).all()


def test_grassmann_alignment_descent_reaches_target() -> None:
    rng = np.random.default_rng(3)
    U = t64(orthonormal(rng, 10, 2))
    B = t64(rng.standard_normal((10, 2))).requires_grad_(True)
    start = float(grassmann_alignment(B, U).detach())
    for _ in range(60):  # plain gradient descent (torch.optim's first import alone costs ~1.5 s)
        (grad,) = torch.autograd.grad(grassmann_alignment(B, U), B)
        with torch.no_grad():
            B -= 2.0 * grad  # the gradient scales as 1/‖B‖, hence the large step
    assert float(grassmann_alignment(B, U).detach()) < 1e-9 < start


# ---------------------------------------------------------------- coefficient loss


def test_coefficient_loss_matches_numpy_and_is_scale_free() -> None:
    rng = np.random.default_rng(4)
    d_out, d_in, r, r_t = 14, 11, 4, 3
    B, A, U = rng.standard_normal((d_out, r)), rng.standard_normal((r, d_in)), orthonormal(rng, d_out, r_t)
    sigma = np.array([1.0, 3.0, 2.0])  # any order: sorted inside
    s = np.linalg.svd(U.T @ (0.5 * B @ A), compute_uv=False)[:r_t]
    ref = np.sum((s - np.sort(sigma)[::-1]) ** 2) / np.sum(sigma**2)
    got = coefficient_loss(t64(B), t64(A), t64(U), t64(sigma), scaling=0.5)
    assert np.isclose(float(got), ref, rtol=1e-10)
    scaled = coefficient_loss(t64(3 * B), t64(A), t64(U), t64(3 * sigma), scaling=0.5)
    assert np.isclose(float(scaled), ref, rtol=1e-10)
    assert np.isclose(float(coefficient_loss(t64(0 * B), t64(A), t64(U), t64(sigma))), 1.0)


def test_coefficient_loss_zero_at_target_and_gradcheck() -> None:
    rng = np.random.default_rng(5)
    U, V = orthonormal(rng, 10, 3), orthonormal(rng, 7, 3)
    sigma = np.array([3.0, 2.0, 0.5])
    B, A = U * sigma, V.T  # B A = U diag(σ) Vᵀ
    assert float(coefficient_loss(t64(B), t64(A), t64(U), t64(sigma))) < 1e-28

    Bg = t64(rng.standard_normal((10, 3))).requires_grad_(True)
    Ag = t64(rng.standard_normal((3, 7))).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda b, a: coefficient_loss(b, a, t64(U), t64(sigma), 2.0), (Bg, Ag))


# ---------------------------------------------------------------- divergences


def softmax(z: np.ndarray, T: float) -> np.ndarray:
    return ssp.softmax(z / T, axis=-1)


REFERENCES = [  # (module, per-row reference on logits s, t at temperature T)
    (KLDivergence(), lambda s, t, T: T**2 * ssp.rel_entr(softmax(t, T), softmax(s, T)).sum()),
    (ReverseKL(), lambda s, t, T: T**2 * ssp.rel_entr(softmax(s, T), softmax(t, T)).sum()),
    (JensenShannon(), lambda s, t, T: T**2 * jensenshannon(softmax(t, T), softmax(s, T)) ** 2),
    (TotalVariation(), lambda s, t, T: T**2 * 0.5 * np.abs(softmax(t, T) - softmax(s, T)).sum()),
    (LogitMSE(), lambda s, t, T: np.mean((s - t) ** 2)),
    (HiddenCosine(), lambda s, t, T: cosine_distance(s, t)),
]


@pytest.mark.parametrize("module,reference", REFERENCES, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_divergences_match_reference_formulas_with_mask(module, reference, temperature: float) -> None:
    rng = np.random.default_rng(6)
    s, t = 2 * rng.standard_normal((3, 4, 7)), 2 * rng.standard_normal((3, 4, 7))  # (batch, tokens, V)
    mask = rng.random((3, 4)) > 0.4
    per = np.array([[reference(s[i, j], t[i, j], temperature) for j in range(4)] for i in range(3)])

    full = module(t64(s), t64(t), temperature=temperature)
    assert np.isclose(float(full), per.mean(), rtol=1e-9, atol=1e-12)
    masked = module(t64(s), t64(t), temperature=temperature, mask=torch.from_numpy(mask))
    assert np.isclose(float(masked), per[mask].mean(), rtol=1e-9, atol=1e-12)
    none = module(t64(s).requires_grad_(True), t64(t), temperature, torch.zeros(3, 4, dtype=torch.bool))
    assert float(none) == 0.0 and none.requires_grad


def test_divergences_low_precision_and_masked_vocabulary() -> None:
    s, t = torch.randn(5, 9, dtype=torch.bfloat16), torch.randn(5, 9, dtype=torch.bfloat16)
    for module, _ in REFERENCES:
        out = module(s, t, temperature=2.0)
        assert out.dtype == torch.float32 and torch.isfinite(out)
    t_masked = torch.randn(5, 9).masked_fill(torch.arange(9) >= 6, float("-inf"))  # teacher excludes 3 tokens
    student = torch.randn(5, 9, requires_grad=True)
    loss = KLDivergence()(student, t_masked) + JensenShannon()(student, t_masked)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_kd_loss_dispatch() -> None:
    rng = np.random.default_rng(7)
    s, t = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    kl = np.mean([4.0 * ssp.rel_entr(softmax(t[i], 2.0), softmax(s[i], 2.0)).sum() for i in range(6)])
    assert np.isclose(float(kd_loss(t64(s), t64(t), temperature=2.0)), kl)
    js = kd_loss(t64(s), t64(t), 1.0, divergence=JensenShannon())
    assert np.isclose(float(js), np.mean([jensenshannon(softmax(t[i], 1), softmax(s[i], 1)) ** 2 for i in range(6)]))
    y_s, y_t = rng.standard_normal(6), rng.standard_normal(6)  # STS-B style scores
    assert np.isclose(float(kd_loss(t64(y_s), t64(y_t), 4.0, regression=True)), np.mean((y_s - y_t) ** 2))
    mask = np.array([True, False, True, True, False, True])
    masked = kd_loss(t64(y_s), t64(y_t), 4.0, regression=True, mask=torch.from_numpy(mask))
    assert np.isclose(float(masked), np.mean((y_s - y_t)[mask] ** 2))


# ---------------------------------------------------------------- α schedules


def test_fixed_schedules_closed_form() -> None:
    assert [ConstantSchedule(0.7)(k) for k in (0, 5, 10_000)] == [0.7, 0.7, 0.7]
    warm = LinearWarmup(2.0, warmup_steps=4)
    assert [warm(k) for k in range(6)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert LinearWarmup(2.0, warmup_steps=0)(0) == 2.0
    cos = CosineDecay(1.0, total_steps=10, final=0.2)
    expected = [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * min(k, 10) / 10)) for k in (0, 3, 5, 10, 20)]
    assert np.allclose([cos(k) for k in (0, 3, 5, 10, 20)], expected)
    assert cos(0) == 1.0 and np.isclose(cos(5), 0.6) and cos(20) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="total_steps=0"):
        CosineDecay(1.0, total_steps=0)


def test_adaptive_schedule_follows_alignment_and_round_trips_state() -> None:
    sched = AdaptiveSchedule(alpha=1.0, target=0.05, gain=2.0, min_alpha=0.1, max_alpha=4.0)
    assert sched(0) == 1.0  # no alignment given: no update
    a1 = sched(1, alignment=0.55)  # above target: α ← α·e^{2·0.5}
    assert np.isclose(a1, math.e)
    assert sched(1, alignment=10.0) == a1  # at most one update per step
    a2 = sched(2, alignment=torch.tensor(0.30))  # would be e·e^{0.5} > 4: clipped
    assert a2 == pytest.approx(4.0)
    a3 = sched(3, alignment=0.05 - 0.5)  # below target: α ← 4·e^{-1}
    assert np.isclose(a3, 4.0 / math.e)
    assert np.isclose(sched(4, alignment=-100.0), 0.1)  # clipped at min_alpha

    state = sched.state_dict()
    resumed = AdaptiveSchedule(alpha=1.0, target=0.05, gain=2.0, min_alpha=0.1, max_alpha=4.0)
    resumed.load_state_dict(state)
    assert resumed(4, alignment=1.0) == sched(4) and resumed(5, 0.3) == sched(5, 0.3)
    with pytest.raises(ValueError, match="min_alpha"):
        AdaptiveSchedule(alpha=1.0, min_alpha=0.0)
