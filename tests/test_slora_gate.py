"""The decision layer of `method=slora` (`SLoRAGate`): modes, loss floor, burn-in, rates, state."""

from __future__ import annotations

import io
import math

import pytest
import torch

from lowrank_lab.errors import LabError
from lowrank_lab.methods.slora_gate import LossFloor, SLoRAGate

SMALL = dict(m=64, k=8, k_topk=4, reorth_every=4, seed=1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny FFTs and SVDs: extra threads only add synchronisation on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _stream(n: int, seed: int = 0, vocab: int = 10):
    """n synthetic batches: h (8, 16), logits (8, vocab), labels (8,), loss (a float)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield (torch.randn(8, 16, generator=g), torch.randn(8, vocab, generator=g),
               torch.randint(0, vocab, (8,), generator=g), float(torch.rand((), generator=g)))  # fmt: skip


def test_loss_floor_accepts_above_the_running_quantile():
    floor = LossFloor(quantile=0.5, window=4)
    assert floor.accept(9.0, burn_in=False)  # empty history accepts
    for x in (1.0, 2.0, 3.0):
        floor.accept(x, burn_in=True)
    assert floor.history == [9.0, 1.0, 2.0, 3.0]  # median 2.5
    assert floor.accept(2.6, burn_in=False)
    assert not floor.accept(2.2, burn_in=False)  # median of [1, 2, 3, 2.6] is 2.3
    assert floor.history == [2.0, 3.0, 2.6, 2.2]  # window of 4, newest last
    assert floor.accept(0.0, burn_in=True)  # burn-in accepts whatever the loss


@pytest.mark.parametrize(
    "mode, rate",
    [("none", 1.0), ("novelty", 0.3), ("loss_floor", 0.3), ("combined", 0.3), ("novelty", 0.6), ("loss_floor", 0.6)],
)
def test_acceptance_rate_converges_to_the_target(mode, rate):
    target = 0.3 if mode == "none" else rate
    gate = SLoRAGate(16, 10, mode=mode, loss_window=50, target_novelty=target, burn_in=20, **SMALL)
    decisions = [gate.decide(h, p, y, loss)[0] for h, p, y, loss in _stream(1500)]
    assert all(decisions[:20])  # burn-in
    assert gate.accepted_steps == sum(decisions) and gate.total_steps == 1500
    assert abs(sum(decisions[20:]) / 1480 - rate) < 0.05


def test_combined_runs_each_filter_at_the_rate_whose_union_is_the_target():
    gate = SLoRAGate(16, 10, mode="combined", target_novelty=0.3, burn_in=0, **SMALL)
    r = 1 - math.sqrt(0.7)
    assert gate.filter_rate == pytest.approx(r) and gate.gate.target_novelty == pytest.approx(r)
    assert gate.floor.quantile == pytest.approx(1 - r)
    assert 1 - (1 - r) ** 2 == pytest.approx(0.3)


def test_burn_in_is_a_count_or_a_fraction_of_the_run():
    gate = SLoRAGate(16, 10, burn_in=0.1, **SMALL)
    gate.set_run_length(750)
    assert gate.gate.burn_in == 75
    gate = SLoRAGate(16, 10, burn_in=30, **SMALL)
    gate.set_run_length(750)
    assert gate.gate.burn_in == 30
    for bad in (-1, 1.5, "soon"):
        with pytest.raises(LabError, match="method.gate.burn_in"):
            SLoRAGate(16, 10, burn_in=bad, **SMALL)


def test_bad_gate_settings_name_the_key():
    with pytest.raises(LabError, match="method.gate.target_novelty"):
        SLoRAGate(16, 10, target_novelty=1.5, **SMALL)
    with pytest.raises(LabError, match="unknown keys"):
        SLoRAGate(16, 10, tau=0.3, **SMALL)
    with pytest.raises(LabError, match="method.gate.loss_window"):
        SLoRAGate(16, 10, loss_window=0, **SMALL)


def test_regression_sketches_h_times_the_residual():
    gate = SLoRAGate(16, 1, mode="none", burn_in=0, **SMALL)
    h, pred, y = torch.randn(8, 16), torch.randn(8, 1), torch.randn(8)
    z = gate.embed(h, pred, y, causal=False)
    e = pred.squeeze(-1) - y  # ∇_W ½(ŷ − y)² = Σ_n h_n (ŷ_n − y_n)
    ref = gate.gate.tensor_sketch(h, e[:, None], reduce=True)
    torch.testing.assert_close(z, ref, atol=1e-5, rtol=1e-5)
    assert gate.decide(h, pred, y, 0.5) == (True, 1.0)


def test_causal_lm_sketches_every_labelled_token_after_the_shift():
    gate = SLoRAGate(16, 50, mode="novelty", burn_in=1, **SMALL)
    h, logits = torch.randn(2, 7, 16), torch.randn(2, 7, 50)
    labels = torch.randint(0, 50, (2, 7))
    labels[:, :3] = -100  # prompt tokens
    z = gate.embed(h, logits, labels, causal=True)
    ref = gate.gate.embed(h[:, :-1], logits[:, :-1], labels[:, 1:], normalize=False)
    torch.testing.assert_close(z, ref)
    accept, nov = gate.decide(h, logits, labels, 1.0, causal=True)
    assert accept and nov == 1.0


@pytest.mark.parametrize("mode", ["novelty", "loss_floor", "combined"])
def test_state_round_trips_through_a_weights_only_checkpoint(mode):
    kw = dict(mode=mode, target_novelty=0.4, loss_window=5, burn_in=5, **SMALL)
    gate = SLoRAGate(16, 10, **kw)
    stream = list(_stream(60, seed=3))
    for h, p, y, loss in stream[:30]:
        gate.decide(h, p, y, loss)
    buf = io.BytesIO()
    torch.save(gate.state_dict(), buf)
    buf.seek(0)
    twin = SLoRAGate(16, 10, **kw)
    twin.load_state_dict(torch.load(buf, weights_only=True))
    for h, p, y, loss in stream[30:]:
        assert gate.decide(h, p, y, loss) == twin.decide(h, p, y, loss)
    assert (gate.accepted_steps, gate.total_steps) == (twin.accepted_steps, twin.total_steps)
    with pytest.raises(LabError, match="method.gate.mode"):
        SLoRAGate(16, 10, **(kw | {"mode": "none"})).load_state_dict(gate.state_dict())
