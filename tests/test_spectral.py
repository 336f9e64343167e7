"""lowrank_lab.spectral against numpy/scipy references (brute-force Σ^{1/2}, subspace_angles, SVD)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla
import torch

from lowrank_lab.spectral import (
    GramAccumulator,
    best_rank_r,
    data_weighted_subspace,
    data_weighted_subspace_from_gram,
    eckart_young_bound,
    effective_rank,
    energy_rank,
    gavish_donoho_rank,
    orthonormal_basis,
    principal_angles,
    subspace_overlap,
    weighted_error,
)

# ---------------------------------------------------------------- helpers (numpy, independent of the package)


def anisotropic_inputs(rng: np.random.Generator, n: int, d_in: int) -> np.ndarray:
    """(n, d_in) rows with a non-zero mean and scales spread over two decades, randomly rotated."""
    rotation = np.linalg.qr(rng.standard_normal((d_in, d_in)))[0]
    scales = np.logspace(0, -2, d_in)
    return (rng.standard_normal((n, d_in)) * scales + 0.3) @ rotation.T


def brute_force_subspace(delta_w: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All left singular pairs of ΔW Σ^{1/2}, with Σ^{1/2} from an explicit eigendecomposition."""
    sigma = x.T @ x / x.shape[0]
    evals, evecs = sla.eigh(sigma)
    sqrt_sigma = (evecs * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T
    U, S, _ = np.linalg.svd(delta_w @ sqrt_sigma)
    return U, S


def projector(U: np.ndarray | torch.Tensor) -> np.ndarray:
    U = U.numpy() if isinstance(U, torch.Tensor) else U
    return U @ U.T


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ---------------------------------------------------------------- data_weighted_subspace


@pytest.mark.parametrize("n", [30, 200], ids=["n<d_in (implicit SVD)", "n>=d_in (QR)"])
def test_data_weighted_subspace_matches_brute_force(n: int) -> None:
    rng = np.random.default_rng(n)
    d_out, d_in, rank = 40, 48, 6
    delta_w, x = rng.standard_normal((d_out, d_in)), anisotropic_inputs(rng, n, d_in)
    U_ref, S_ref = brute_force_subspace(delta_w, x)

    U, S = data_weighted_subspace(t64(delta_w), t64(x), rank, method="exact")
    assert U.shape == (d_out, rank) and S.shape == (rank,) and U.dtype == torch.float64
    assert max_rel(S.numpy(), S_ref[:rank]) < 1e-5
    assert max_rel(projector(U), projector(U_ref[:, :rank])) < 1e-5


def test_data_weighted_subspace_float32_leading_dims_and_autocast() -> None:
    rng = np.random.default_rng(1)
    delta_w, x = rng.standard_normal((24, 32)), anisotropic_inputs(rng, 60, 32)
    U_ref, S_ref = brute_force_subspace(delta_w, x)
    x3 = torch.from_numpy(x).float().reshape(3, 20, 32)  # (batch, tokens, d_in)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        U, S = data_weighted_subspace(torch.from_numpy(delta_w).half(), x3.bfloat16(), 4)
    assert U.dtype == torch.float32 and S.dtype == torch.float32
    # half/bf16 rounding of the inputs dominates here, hence the looser tolerance
    assert max_rel(S.double().numpy(), S_ref[:4]) < 2e-2
    U32, S32 = data_weighted_subspace(torch.from_numpy(delta_w).float(), x3, 4)
    assert max_rel(S32.double().numpy(), S_ref[:4]) < 1e-5
    assert max_rel(projector(U32.double()), projector(U_ref[:, :4])) < 1e-4


def test_randomized_branch_on_decaying_spectrum() -> None:
    rng = np.random.default_rng(2)
    d_out, d_in, n, rank = 60, 80, 300, 5
    left = np.linalg.qr(rng.standard_normal((d_out, d_out)))[0]
    right = np.linalg.qr(rng.standard_normal((d_in, d_out)))[0]
    delta_w = (left * 0.6 ** np.arange(d_out)) @ right.T  # geometric spectrum
    x = anisotropic_inputs(rng, n, d_in)
    U_ref, S_ref = brute_force_subspace(delta_w, x)

    gen = torch.Generator().manual_seed(0)
    U, S = data_weighted_subspace(t64(delta_w), t64(x), rank, method="randomized", generator=gen)
    assert U.shape == (d_out, rank)
    assert np.allclose(U.T.numpy() @ U.numpy(), np.eye(rank), atol=1e-10)
    assert max_rel(S.numpy(), S_ref[:rank]) < 1e-3
    assert max_rel(projector(U), projector(U_ref[:, :rank])) < 1e-2
    # same seed, same answer
    U2, _ = data_weighted_subspace(
        t64(delta_w), t64(x), rank, method="randomized", generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(U, U2)


def test_from_gram_matches_rows_including_singular_gram() -> None:
    rng = np.random.default_rng(3)
    delta_w = rng.standard_normal((20, 30))
    for n in (100, 12):  # 12 < d_in: xᵀx is singular, Cholesky fails and the eigh route takes over
        x = anisotropic_inputs(rng, n, 30)
        U_ref, S_ref = brute_force_subspace(delta_w, x)
        U, S = data_weighted_subspace_from_gram(t64(delta_w), t64(x.T @ x), n, 5)
        assert max_rel(S.numpy(), S_ref[:5]) < 1e-5
        assert max_rel(projector(U), projector(U_ref[:, :5])) < 1e-5


def test_invalid_arguments_raise_one_line_errors() -> None:
    delta_w, x = torch.randn(8, 6), torch.randn(4, 6)
    with pytest.raises(ValueError, match="rank=5"):
        data_weighted_subspace(delta_w, x, 5)  # only min(8, 6, 4) = 4 directions exist
    with pytest.raises(ValueError, match="method='svd'"):
        data_weighted_subspace(delta_w, x, 2, method="svd")
    with pytest.raises(ValueError, match="d_in=6"):
        data_weighted_subspace(delta_w, torch.randn(4, 7), 2)
    with pytest.raises(ValueError, match="rank=5"):
        data_weighted_subspace_from_gram(delta_w, x.T @ x, 4, 5)  # Gram of 4 rows has rank 4


# ---------------------------------------------------------------- Eckart–Young in the data-weighted norm


def test_best_rank_r_attains_eckart_young_bound_and_beats_plain_svd() -> None:
    rng = np.random.default_rng(4)
    d_out, d_in, n, rank = 30, 40, 120, 4
    delta_w, x = rng.standard_normal((d_out, d_in)), anisotropic_inputs(rng, n, d_in)
    DW, X = t64(delta_w), t64(x)

    _, S_all = data_weighted_subspace(DW, X, min(d_out, d_in))
    B, A = best_rank_r(DW, X, rank)
    assert B.shape == (d_out, rank) and A.shape == (rank, d_in)
    err = weighted_error(DW, B @ A, X)
    bound = eckart_young_bound(S_all, rank)
    assert abs(float(err / bound) - 1.0) < 1e-4

    # weighted_error against its definition mean_i ‖E x_i‖²
    E = delta_w - (B @ A).numpy()
    assert np.isclose(float(err), np.mean(np.sum((x @ E.T) ** 2, axis=1)), rtol=1e-10)
    # the unweighted truncated SVD of ΔW is worse in the data-weighted norm
    U, s, Vt = np.linalg.svd(delta_w)
    plain = (U[:, :rank] * s[:rank]) @ Vt[:rank]
    assert float(weighted_error(DW, t64(plain), X)) > float(bound) * 1.01


# ---------------------------------------------------------------- principal angles


@pytest.mark.parametrize("p,q", [(4, 4), (3, 6), (6, 2)])
def test_principal_angles_match_scipy(p: int, q: int) -> None:
    rng = np.random.default_rng(10 * p + q)
    A, B = rng.standard_normal((20, p)), rng.standard_normal((20, q))
    ref = np.sort(sla.subspace_angles(A, B))  # scipy: descending
    got = principal_angles(t64(A), t64(B)).numpy()
    assert np.all(np.diff(got) >= 0)
    assert np.allclose(got, ref, atol=1e-10)


def test_principal_angles_small_angles_and_rank_deficiency() -> None:
    rng = np.random.default_rng(5)
    A = rng.standard_normal((30, 4))
    B = A + 1e-7 * rng.standard_normal((30, 4))  # tiny angles: needs the sine route, arccos would give ~1e-8
    got = principal_angles(t64(A), t64(B)).numpy()
    assert np.allclose(got, np.sort(sla.subspace_angles(A, B)), rtol=1e-5, atol=1e-14)
    assert got.max() < 1e-5

    C = np.column_stack([A[:, 0], A[:, 1], A[:, 0] + A[:, 1]])  # rank 2
    Q = orthonormal_basis(t64(C)).numpy()
    assert Q.shape == (30, 2) and np.allclose(Q.T @ Q, np.eye(2), atol=1e-12)
    assert np.allclose(projector(Q), projector(sla.orth(C)), atol=1e-10)
    got = principal_angles(t64(C), t64(B)).numpy()
    assert got.shape == (2,) and np.allclose(got, np.sort(sla.subspace_angles(C, B)), atol=1e-7)
    assert orthonormal_basis(torch.zeros(5, 3)).shape == (5, 0)


def test_subspace_overlap() -> None:
    rng = np.random.default_rng(6)
    A, B = rng.standard_normal((25, 5)), rng.standard_normal((25, 3))
    ref = np.mean(np.cos(sla.subspace_angles(A, B)) ** 2)
    assert np.isclose(float(subspace_overlap(t64(A), t64(B))), ref, atol=1e-12)
    assert np.isclose(float(subspace_overlap(t64(A), t64(A @ rng.standard_normal((5, 2))))), 1.0)
    eye = torch.eye(6, dtype=torch.float64)
    assert float(subspace_overlap(eye[:, :3], eye[:, 3:])) == 0.0


# ---------------------------------------------------------------- rank selection


def test_energy_and_effective_rank_match_numpy() -> None:
    s = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    energy = np.cumsum(s**2) / np.sum(s**2)
    for threshold in (0.5, 0.9, 0.99, 1.0):
        assert energy_rank(torch.tensor(s[::-1].copy()), threshold) == int(np.argmax(energy >= threshold - 1e-15)) + 1
    p = s / s.sum()
    assert np.isclose(effective_rank(torch.tensor(s)), np.exp(-np.sum(p * np.log(p))), rtol=1e-12)
    assert np.isclose(effective_rank(torch.ones(7)), 7.0)
    assert np.isclose(effective_rank(torch.tensor([2.0, 0.0, 0.0])), 1.0)
    assert energy_rank(torch.zeros(4)) == 0


def test_gavish_donoho_threshold_formulas_and_planted_rank() -> None:
    rng = np.random.default_rng(7)
    m, n, rank, noise = 80, 160, 5, 1.0
    beta = m / n
    signal = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))
    signal *= 4.0 * np.sqrt(n) * noise / np.linalg.svd(signal, compute_uv=False)[rank - 1]  # above the edge
    s = np.linalg.svd(signal + noise * rng.standard_normal((m, n)), compute_uv=False)
    S = torch.tensor(s)

    omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
    lam = np.sqrt(2 * (beta + 1) + 8 * beta / (beta + 1 + np.sqrt(beta**2 + 14 * beta + 1)))
    assert gavish_donoho_rank(S, (m, n)) == int(np.sum(s > omega * np.median(s))) == rank
    assert gavish_donoho_rank(S, (n, m), sigma=noise) == int(np.sum(s > lam * np.sqrt(n) * noise)) == rank
    # pure noise: nothing survives the threshold
    s_noise = np.linalg.svd(rng.standard_normal((m, n)), compute_uv=False)
    assert gavish_donoho_rank(torch.tensor(s_noise), (m, n), sigma=1.0) == 0


# ---------------------------------------------------------------- GramAccumulator


def test_gram_accumulator_streams_batches_and_samples_rows() -> None:
    rng = np.random.default_rng(8)
    batches = [rng.standard_normal((b, 7, 5)).astype(np.float32) for b in (3, 1, 4, 2)]  # (batch, tokens, d)
    rows = np.concatenate([b.reshape(-1, 5) for b in batches]).astype(np.float64)

    acc = GramAccumulator(5, max_rows=16, seed=3)
    for b in batches:
        acc.update(torch.from_numpy(b))
    assert acc.n == rows.shape[0] == 70
    assert acc.gram.dtype == torch.float64
    assert np.allclose(acc.gram.numpy(), rows.T @ rows, rtol=1e-12)
    assert np.allclose(acc.covariance.numpy(), rows.T @ rows / 70, rtol=1e-12)

    sample = acc.sample.double().numpy()
    assert sample.shape == (16, 5)
    index = [int(np.argmin(np.abs(rows - r).sum(axis=1))) for r in sample]  # every kept row is a real row
    assert np.allclose(rows[index], sample) and len(set(index)) == 16 and index == sorted(index)

    again = GramAccumulator(5, max_rows=16, seed=3)
    for b in batches:
        again.update(torch.from_numpy(b))
    assert torch.equal(again.sample, acc.sample)

    everything = GramAccumulator(5, max_rows=100)
    for b in batches:
        everything.update(torch.from_numpy(b))
    assert np.allclose(everything.sample.numpy(), rows)
    assert GramAccumulator(5).sample is None
    with pytest.raises(ValueError, match="no rows"):
        _ = GramAccumulator(5).covariance
