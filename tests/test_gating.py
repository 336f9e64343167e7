"""Tests for lowrank_lab.gating: sketches, Frequent Directions and the SLoRA head-gradient gate."""

import io

import numpy as np
import pytest
import torch

from lowrank_lab.gating import CountSketch, FrequentDirections, HeadGradientGate, TensorSketch


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _small_gate(**kw) -> HeadGradientGate:
    cfg = dict(d_hidden=8, vocab_size=20, m=32, k=4, burn_in=20, reorth_every=8, k_topk=5, seed=3)
    cfg.update(kw)
    return HeadGradientGate(**cfg)


def test_countsketch_matches_explicit_matrix_and_sparse_form():
    cs = CountSketch(dim=30, m=8, seed=1)
    mat = torch.zeros(8, 30)
    mat[cs.hashes, torch.arange(30)] = cs.signs  # S[h(i), i] = s(i)
    x = torch.randn(4, 5, 30, generator=_gen(0))
    torch.testing.assert_close(cs(x), x @ mat.T)
    idx = torch.randint(0, 30, (4, 6), generator=_gen(1))
    idx[:, 0] = idx[:, 1]  # a duplicate index adds up
    vals = torch.randn(4, 6, generator=_gen(2))
    dense = torch.zeros(4, 30).scatter_add_(-1, idx, vals)
    torch.testing.assert_close(cs.sketch_sparse(vals, idx), cs(dense))


def test_countsketch_preserves_inner_products_in_expectation():
    x = torch.randn(40, generator=_gen(0))
    y = 0.7 * x + torch.randn(40, generator=_gen(1))
    est = torch.stack([CountSketch(40, 16, seed=s)(x) @ CountSketch(40, 16, seed=s)(y) for s in range(2000)])
    se = est.std() / est.numel() ** 0.5
    assert abs(est.mean() - x @ y) < 4 * se
    assert CountSketch(40, 16, seed=5).hashes.equal(CountSketch(40, 16, seed=5).hashes)  # seeded


def test_tensorsketch_equals_countsketch_of_outer_product():
    ts = TensorSketch(dim_a=5, dim_b=7, m=8, seed=2)
    a, b = torch.randn(3, 5, generator=_gen(0)), torch.randn(3, 7, generator=_gen(1))
    ha, sa, hb, sb = ts.cs_a.hashes, ts.cs_a.signs, ts.cs_b.hashes, ts.cs_b.signs
    ref = torch.zeros(3, 8)
    for i in range(5):  # pair hash (h_a(i) + h_b(j)) mod m, sign s_a(i) s_b(j)
        for j in range(7):
            ref[:, (ha[i] + hb[j]) % 8] += sa[i] * sb[j] * a[:, i] * b[:, j]
    torch.testing.assert_close(ts(a, b), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ts(a, b, reduce=True), ref.sum(0), atol=1e-5, rtol=1e-5)
    idx = torch.tensor([[0, 3], [6, 6], [2, 1]])
    vals = torch.randn(3, 2, generator=_gen(2))
    dense = torch.zeros(3, 7).scatter_add_(-1, idx, vals)
    torch.testing.assert_close(ts.sketch_sparse(a, vals, idx), ts(a, dense), atol=1e-5, rtol=1e-5)


def test_tensorsketch_preserves_kronecker_inner_products_in_expectation():
    a, b = torch.randn(12, generator=_gen(0)), torch.randn(10, generator=_gen(2))
    a2, b2 = 0.5 * a + torch.randn(12, generator=_gen(1)), -0.8 * b + torch.randn(10, generator=_gen(3))
    aa, bb = torch.stack([a, a2]), torch.stack([b, b2])
    zs = torch.stack([TensorSketch(12, 10, 32, seed=s)(aa, bb) for s in range(1500)])  # (S, 2, m)
    est = (zs[:, 0] * zs[:, 1]).sum(-1)
    se = est.std() / est.numel() ** 0.5
    assert abs(est.mean() - (a @ a2) * (b @ b2)) < 4 * se  # ⟨a⊗b, a'⊗b'⟩ = ⟨a,a'⟩⟨b,b'⟩


@pytest.mark.parametrize("m", [0, 48, 100])
def test_tensorsketch_rejects_non_power_of_two(m):
    with pytest.raises(ValueError, match="power of two"):
        TensorSketch(4, 4, m)


@pytest.mark.parametrize(
    "n, dim, ell, dtype",
    [(40, 10, 3, torch.float64), (300, 30, 5, torch.float64), (900, 48, 10, torch.float64)]
    + [(200, 6, 8, torch.float64), (500, 40, 6, torch.float32)],  # dim < ell; float32 buffer
)
def test_frequent_directions_error_bound(n, dim, ell, dtype):
    g = _gen(n + dim)
    decay = torch.linspace(1.0, 0.05, dim, dtype=torch.float64) ** 2
    a = torch.randn(n, dim, generator=g, dtype=torch.float64) * decay  # a stream with a decaying spectrum
    fd = FrequentDirections(dim, ell, dtype=dtype)
    start = 0
    while start < n:  # random chunk sizes, including single rows and chunks larger than the buffer
        size = int(torch.randint(1, 3 * ell, (1,), generator=g))
        fd.update(a[start : start + size])
        start += size
    a_np = a.numpy()
    frob2 = float((a_np**2).sum())
    tol = 1e-9 if dtype == torch.float64 else 1e-4 * frob2
    for sketch in (fd.sketch, fd.buffer[: fd.next_row]):
        b_np = sketch.double().numpy()
        diff = a_np.T @ a_np - b_np.T @ b_np
        err = np.linalg.norm(diff, 2)
        assert err <= 2 * frob2 / ell + tol  # design bound
        assert err <= frob2 / ell + tol  # the classic FD bound holds too
        assert np.linalg.eigvalsh(diff).min() >= -tol  # BᵀB ⪯ AᵀA
    assert fd.sketch.shape[0] <= ell


def test_frequent_directions_basis_orthonormal_and_rank_limited():
    fd = FrequentDirections(20, 6)
    fd.update(torch.randn(50, 20, generator=_gen(0)))
    w = fd.basis(4)
    assert w.shape == (20, 4)
    torch.testing.assert_close(w.T @ w, torch.eye(4), atol=1e-5, rtol=0)
    low = FrequentDirections(20, 6)
    low.update(torch.randn(30, 2, generator=_gen(1)) @ torch.randn(2, 20, generator=_gen(2)))
    assert low.basis(4).shape == (20, 2)  # only directions that carry energy
    assert FrequentDirections(20, 6).basis(4).shape == (20, 0)


def _row_space(rows: torch.Tensor) -> np.ndarray:
    """An orthonormal basis of the row space, by scipy (the independent reference)."""
    from scipy.linalg import orth

    return orth(rows.double().numpy().T, rcond=1e-6)


@pytest.mark.parametrize("ell, rows", [(3, None), (2, 4), (4, 5)])
def test_frequent_directions_span_is_the_buffer_row_space_and_keeps_the_newest_row(ell, rows):
    from scipy.linalg import subspace_angles

    fd = FrequentDirections(24, ell, rows=rows)
    g = _gen(7)
    for _ in range(40):
        row = torch.randn(24, generator=g)
        fd.update(row)
        span = fd.span.double().numpy()
        want = _row_space(fd.buffer[: fd.next_row])
        assert span.shape[1] == want.shape[1] <= fd.buffer.shape[0]
        assert subspace_angles(span, want).max() < 1e-3  # the same space as scipy's
        np.testing.assert_allclose(span.T @ span, np.eye(span.shape[1]), atol=1e-5)
        unit = row.double().numpy() / np.linalg.norm(row.numpy())
        assert 1 - np.sum((span.T @ unit) ** 2) < 1e-5  # the row just added lies in the span
    with pytest.raises(ValueError, match="rows"):
        FrequentDirections(24, 3, rows=3)


def test_frequent_directions_state_round_trip():
    fd = FrequentDirections(12, 3)
    fd.update(torch.randn(17, 12, generator=_gen(0)))
    other = FrequentDirections(12, 3)
    other.load_state_dict(fd.state_dict())
    more = torch.randn(9, 12, generator=_gen(1))
    fd.update(more)
    other.update(more)
    torch.testing.assert_close(fd.sketch, other.sketch)
    torch.testing.assert_close(fd.span, other.span)
    with pytest.raises(ValueError, match="ell"):
        FrequentDirections(12, 4).load_state_dict(fd.state_dict())


def _dense_reference(gate: HeadGradientGate, h, logits, labels) -> torch.Tensor:
    """z from the dense error e = softmax(p) − onehot(y), keeping the top-K logits and the gold entry."""
    h, p, y = h.reshape(-1, h.shape[-1]), logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
    keep = y != -100
    h, p, y = h[keep], p[keep], y[keep]
    e = torch.softmax(p, -1) - torch.nn.functional.one_hot(y, p.shape[-1]).float()
    mask = torch.zeros_like(e, dtype=torch.bool)
    mask.scatter_(-1, torch.topk(p, min(gate.k_topk, p.shape[-1]), -1).indices, True)
    mask.scatter_(-1, y[:, None], True)
    z = gate.tensor_sketch(h.float(), e * mask).sum(0)
    return z / z.norm()


@pytest.mark.parametrize("shape", [(6,), (3, 5)])  # classification (B,) and LM (B, T)
@pytest.mark.parametrize("k_topk", [3, 20, 64])  # sparsified, and k_topk ≥ V (exactly the dense error)
def test_embed_matches_dense_reference(shape, k_topk):
    gate = _small_gate(k_topk=k_topk)
    h = torch.randn(*shape, 8, generator=_gen(0))
    logits = 3 * torch.randn(*shape, 20, generator=_gen(1))
    labels = torch.randint(0, 20, shape, generator=_gen(2))
    flat = logits.view(-1, 20)
    flat[0, labels.view(-1)[0]] = 50.0  # gold inside the top-K
    flat[1, labels.view(-1)[1]] = -50.0  # gold outside the top-K
    z = gate.embed(h, logits, labels)
    assert z.shape == (32,) and z.dtype == torch.float32
    torch.testing.assert_close(z.norm(), torch.tensor(1.0))
    torch.testing.assert_close(z, _dense_reference(gate, h, logits, labels), atol=1e-5, rtol=1e-4)
    if k_topk >= 20:  # no sparsification: the plain dense error
        e = torch.softmax(flat, -1) - torch.nn.functional.one_hot(labels.view(-1), 20)
        ref = gate.tensor_sketch(h.view(-1, 8), e).sum(0)
        torch.testing.assert_close(z, ref / ref.norm(), atol=1e-5, rtol=1e-4)


def test_embed_ignores_masked_tokens_and_flattens_consistently():
    gate = _small_gate()
    h = torch.randn(2, 6, 8, generator=_gen(0))
    logits = torch.randn(2, 6, 20, generator=_gen(1))
    labels = torch.randint(0, 20, (2, 6), generator=_gen(2))
    labels[0, 4:] = -100
    labels[1, 0] = -100
    z = gate.embed(h, logits, labels)
    h2, logits2 = h.clone(), logits.clone()
    ignored = labels == -100
    h2[ignored] = torch.randn(int(ignored.sum()), 8)
    logits2[ignored] = torch.randn(int(ignored.sum()), 20)
    torch.testing.assert_close(gate.embed(h2, logits2, labels), z)
    torch.testing.assert_close(gate.embed(h.view(12, 8), logits.view(12, 20), labels.view(12)), z)
    # bf16 logits are computed in float32
    assert gate.embed(h, logits.bfloat16(), labels).dtype == torch.float32
    # causal shift: logits[:, :-1] predict labels[:, 1:]
    shifted = gate.embed(h, logits, labels, shift_labels=True)
    torch.testing.assert_close(shifted, gate.embed(h[:, :-1], logits[:, :-1], labels[:, 1:]))
    # all ignored: zero sketch, zero novelty
    z0 = gate.embed(h, logits, torch.full((2, 6), -100))
    assert not z0.any() and gate.novelty(z0) == 0.0
    with pytest.raises(ValueError, match="embed expects"):
        gate.embed(torch.randn(2, 3, 8), torch.randn(2, 4, 20), torch.zeros(2, 3, dtype=torch.long))


def test_novelty_orthogonal_inside_and_range():
    gate = HeadGradientGate(d_hidden=8, vocab_size=20, m=64, k=8, burn_in=0, seed=0)
    assert gate.novelty(torch.randn(64)) == 1.0  # no basis yet
    for z in torch.randn(30, 64, generator=_gen(0)):
        gate.update(z)
    w = gate.basis
    q = w.shape[1]
    assert w.shape[0] == 64 and 4 <= q <= 8  # ℓ = k/2 shrunk directions + the sketches accepted since
    torch.testing.assert_close(w.T @ w, torch.eye(q), atol=1e-5, rtol=0)
    inside = w @ torch.randn(q, generator=_gen(1))
    assert gate.novelty(inside) == pytest.approx(0.0, abs=1e-5)
    r = torch.randn(64, generator=_gen(2))
    assert gate.novelty(r - w @ (w.T @ r)) == pytest.approx(1.0, abs=1e-5)
    for z in torch.randn(50, 64, generator=_gen(3)):
        assert 0.0 <= gate.novelty(z) <= 1.0
    assert 0.0 <= gate.novelty(inside * 1e6) <= 1.0


def test_basis_orthonormal_after_periodic_reorthogonalisation():
    gate = _small_gate(burn_in=0, reorth_every=5)
    for z in torch.randn(17, 32, generator=_gen(0)):
        gate.update(z)
    q = gate.basis.shape[1]
    assert gate.num_updates == 17 and gate.basis.shape[0] == 32 and 2 <= q <= 4  # re-orthonormalised at 5, 10, 15
    torch.testing.assert_close(gate.basis.T @ gate.basis, torch.eye(q), atol=1e-5, rtol=0)


def test_burn_in_accepts_every_step_and_fills_the_basis():
    gate = _small_gate(burn_in=50, reorth_every=1000)
    for z in torch.randn(50, 32, generator=_gen(0)):
        assert gate.accept(0.0)
        gate.update(z)
        gate.step()
    assert gate.accepted_steps == gate.total_steps == 50 and gate.acceptance_rate() == 1.0
    assert gate.basis.shape[0] == 32 and 2 <= gate.basis.shape[1] <= 4  # current after every accept


def test_an_accepted_sketch_is_in_the_basis_right_after_update():
    """The seed's step 7, W ← FD(W, ẑ): after update(z), novelty(z) ≈ 0, whatever reorth_every is; W has rank ≤ k
    and spans exactly the FD buffer's rows (scipy's orth of the buffer)."""
    from scipy.linalg import subspace_angles

    gates = [_small_gate(burn_in=0, reorth_every=r, m=64, k=8) for r in (1, 7, 10_000)]
    for z in _synthetic_stream(300, 64, seed=5):
        for gate in gates:
            gate.update(z)
            assert gate.novelty(z) < 1e-4
            assert gate.basis.shape[1] <= gate.k
    spans = [g.basis.double().numpy() for g in gates]
    reference = _row_space(gates[0].fd.buffer[: gates[0].fd.next_row])
    for span in spans:  # reorth_every re-orthonormalises only: the same space every time
        assert subspace_angles(span, reference).max() < 1e-3


def test_redundant_sketches_lose_novelty_at_once():
    """Two sketches accepted one after the other: a repeat of either is seen as redundant right away."""
    gate = _small_gate(burn_in=0, m=64, k=8, reorth_every=128)
    a, b = torch.randn(2, 64, generator=_gen(11))
    assert gate.novelty(a) == 1.0
    gate.update(a)
    gate.update(b)
    assert gate.novelty(a) < 1e-4 and gate.novelty(b) < 1e-4 and gate.novelty(a + 2 * b) < 1e-4
    assert gate.novelty(torch.randn(64, generator=_gen(12))) > 0.5


def _synthetic_stream(n: int, m: int, seed: int) -> torch.Tensor:
    """Sketches that mostly live in a drifting low-dimensional subspace, with occasional novel ones."""
    g = _gen(seed)
    centres = torch.randn(6, m, generator=g)
    mix = torch.randn(n, 6, generator=g) * (torch.rand(n, 6, generator=g) < 0.5)
    noise = torch.randn(n, m, generator=g) * torch.rand(n, 1, generator=g)
    return mix @ centres + noise


@pytest.mark.parametrize("target, beta", [(0.30, 10.0), (0.5, 5.0), (0.15, 20.0)])
def test_acceptance_rate_converges_to_target(target, beta):
    burn_in = 200
    gate = _small_gate(target_novelty=target, target_novelty_scaler=beta, burn_in=burn_in, reorth_every=16)
    for z in _synthetic_stream(3000, 32, seed=int(100 * target)):
        if gate.accept(gate.novelty(z)):
            gate.update(z)
        gate.step()
    assert gate.total_steps == 3000
    rate = (gate.accepted_steps - burn_in) / (gate.total_steps - burn_in)
    assert abs(rate - target) < 0.05


def _batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = _gen(seed)
    out = []
    for _ in range(n):
        labels = torch.randint(0, 20, (2, 3), generator=g)
        labels[torch.rand(2, 3, generator=g) < 0.2] = -100
        out.append((torch.randn(2, 3, 8, generator=g), 3 * torch.randn(2, 3, 20, generator=g), labels))
    return out


def test_state_dict_round_trip_gives_identical_future_decisions():
    gate = _small_gate(burn_in=40)
    for batch in _batches(120, seed=0):
        gate.decide(*batch)
    buf = io.BytesIO()
    torch.save(gate.state_dict(), buf)
    buf.seek(0)
    restored = _small_gate(burn_in=40)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    future = _batches(150, seed=1)
    first = [gate.decide(*b) for b in future]
    second = [restored.decide(*b) for b in future]
    assert first == second
    assert 0 < sum(a for a, _ in first) < len(first)  # the decisions are not trivial
    assert gate.tau == restored.tau and gate.accepted_steps == restored.accepted_steps
    with pytest.raises(ValueError, match="seed"):
        _small_gate(seed=4).load_state_dict(gate.state_dict())


def test_decide_with_sync_fn_matches_global_batch_on_every_rank():
    ranks = [_small_gate(burn_in=10), _small_gate(burn_in=10)]
    single = _small_gate(burn_in=10)
    for h, logits, labels in _batches(60, seed=2):
        parts = [(h[i : i + 1], logits[i : i + 1], labels[i : i + 1]) for i in range(2)]
        local = [g.embed(*p, normalize=False) for g, p in zip(ranks, parts)]
        total = local[0] + local[1]  # what an all-reduce (sum) returns on every rank
        decisions = [g.decide(*p, sync_fn=lambda z, t=total: t.clone()) for g, p in zip(ranks, parts)]
        ref = single.decide(h, logits, labels)
        assert decisions[0] == decisions[1]
        assert decisions[0][0] == ref[0] and decisions[0][1] == pytest.approx(ref[1], abs=1e-5)


def test_constructor_defaults_and_validation():
    gate = HeadGradientGate(d_hidden=16, vocab_size=50)
    assert (gate.m, gate.k, gate.k_topk, gate.burn_in, gate.reorth_every) == (512, 64, 64, 2000, 128)
    assert (gate.target_novelty, gate.beta, gate.eta) == (0.30, 10.0, 0.01)
    with pytest.raises(ValueError, match="target_novelty"):
        HeadGradientGate(16, 50, target_novelty=1.5)
    with pytest.raises(ValueError, match="power of two"):
        HeadGradientGate(16, 50, m=500)
    with pytest.raises(ValueError, match="k "):
        HeadGradientGate(16, 50, m=8, k=16)
