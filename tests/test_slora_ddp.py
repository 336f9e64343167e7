"""Under DDP every rank takes the same gate decision (2 CPU processes, gloo): each rank sees its own data, the
sketch and loss are all-reduced, so decisions, basis and weights agree and no rank skips a backward alone."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from lowrank_lab.methods.slora_gate import MODES, SLoRAGate

WORLD, STEPS = 2, 24
GATE = dict(m=32, k=4, k_topk=3, reorth_every=2, burn_in=3, target_novelty=0.4, loss_window=5, seed=0)


def _batches(rank: int):
    g = torch.Generator().manual_seed(100 + rank)  # different data on every rank
    return [(torch.randn(4, 6, generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(STEPS)]


def _train(mode: str, rank: int) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 5))  # head: model[2], (B, 16) -> (B, 5)
    io: dict[str, torch.Tensor] = {}
    model[2].register_forward_hook(lambda m, a, out: io.update(h=a[0].detach(), logits=out.detach()))
    ddp = DDP(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gate = SLoRAGate(16, 5, mode=mode, **GATE)
    decisions = []
    for x, y in _batches(rank):
        loss = F.cross_entropy(ddp(x), y)  # one forward with grad
        accept, novelty = gate.decide(io["h"], io["logits"], y, loss.detach())  # default sync: all-reduce
        decisions.append((accept, novelty))
        if accept:
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {"decisions": decisions, "params": [p.detach().clone() for p in model.parameters()],
            "basis": gate.gate.basis.clone(), "tau": gate.gate.tau}  # fmt: skip


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    results = {mode: _train(mode, rank) for mode in MODES}
    io: dict[str, torch.Tensor] = {}
    head = nn.Linear(6, 5)
    head.register_forward_hook(lambda m, a, out: io.update(h=a[0].detach(), logits=out.detach()))
    alone = SLoRAGate(6, 5, mode="novelty", **GATE)  # control: no sync, each rank decides on its own batch
    for x, y in _batches(rank):
        loss = F.cross_entropy(head(x), y)
        results.setdefault("unsynced", []).append(alone.decide(io["h"], io["logits"], y, loss, sync_fn=None)[0])
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_every_rank_takes_the_same_decision(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    for mode in MODES:
        assert r0[mode]["decisions"] == r1[mode]["decisions"], mode  # accept and novelty, bit for bit
        accepted = [a for a, _ in r0[mode]["decisions"]]
        assert all(accepted[:3]) and (all(accepted) if mode == "none" else not all(accepted)), (mode, accepted)
        for p0, p1 in zip(r0[mode]["params"], r1[mode]["params"]):
            assert torch.equal(p0, p1), mode  # same decisions -> same all-reduced updates
        assert torch.equal(r0[mode]["basis"], r1[mode]["basis"]) and r0[mode]["tau"] == r1[mode]["tau"]
    assert r0["unsynced"] != r1["unsynced"]  # without the sync the ranks disagree (and DDP would hang)


@pytest.mark.slow
def test_lightning_ddp_spawn_gated_run_agrees_on_both_ranks(tmp_path):
    """The real module under Lightning DDP (manual optimisation, 2 CPU processes): same decisions and weights."""
    import lightning as L

    from tests.test_slora import GATE as MODULE_GATE
    from tests.test_slora import RecordRanks, _loader, _module

    module = _module(gate=dict(MODULE_GATE, mode="combined", target_novelty=0.3), dropout=0.0)
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[RecordRanks(str(tmp_path))],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=_loader(16))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["accepted"] == r1["accepted"] and len(r0["accepted"]) == 8  # 16 batches split over 2 ranks
    assert r0["accepted"][-1] < 8  # some batches were rejected
    for p0, p1 in zip(r0["params"], r1["params"]):
        assert torch.equal(p0, p1)
