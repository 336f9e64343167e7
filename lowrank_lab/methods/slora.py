"""`method=slora`: SLoRA's pre-backward gate around any method, `method.inner` (default finetune).

A wrapper: `SLoRAModule(inner=<the gated method's class or partial>, gate=…)` builds the inner method with the
run's student, task (and teacher) and owns only the step. One forward with grad per batch; the gate
(`slora_gate.SLoRAGate`) reads the detached input and output of the head's final linear layer, i.e. exactly what the
head consumes: for BERT sequence classification the pooled [CLS] vector tanh(W_p h_[CLS]) after dropout, (B, H),
one token per example (it is not in `hidden_states`); for RoBERTa the input of `classifier.out_proj`; for a causal
LM the last hidden state (B, T, H) = hidden_states[-1], every labelled token. On accept: the inner method's loss,
backward, clipping, optimizer and scheduler step. On reject the step returns after the forward and the gate: no
loss (in the novelty / none modes the decision does not need it, so a teacher forward or an alignment term is not
paid for), no backward; parameters, optimizer state (Adam moments) and scheduler are untouched and the graph is
freed.

Manual optimisation: `trainer.global_step` (hence `trainer.max_steps` and checkpoint names) counts optimizer
steps, i.e. accepted batches; bound runs with `max_epochs`. Clip with `method.grad_clip` (else the inner method's;
Lightning refuses `trainer.gradient_clip_val` under manual optimisation). The LR schedule's clock
(`method.lr_clock`): `batches` (default) keeps the LR a function of the batches seen, as in the ungated run: an
accepted step first advances the scheduler over the batches rejected since the previous step, so every mode ends
its schedule with the data whatever its realised acceptance rate; `accepted` advances it once per optimizer step
(the schedule then stops short under gating). The Lightning hooks listed below are forwarded to the inner method
(tests/test_slora.py checks that every hook a method in lowrank_lab overrides is among them), so the gated method
keeps its own behaviour (SAD's `alpha_schedule` and clipping, KD's cached logits, …); its `self.log` calls land in
this run. A hook outside the list that a new method overrides needs one forwarding line here. SLAD is not gated: its
forward does not run the student's head.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn as nn

from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import LabError, bad_value
from lowrank_lab.methods.base import AdapterModule, require_own_weights, trainable_only
from lowrank_lab.methods.slora_gate import SLoRAGate

PLOT_FILE, CURVE_FILE = "slora_val_loss_vs_accepted_steps.png", "slora_curve.json"


class SLoRAModule(L.LightningModule):
    """L = the inner method's training loss, back-propagated only for batches the gate accepts (SLoRA)."""

    def __init__(
        self,
        inner: Callable[..., AdapterModule],
        gate: Mapping[str, Any] | None = None,
        lr_clock: str = "batches",
        grad_clip: float | None = None,
        **inner_kwargs: Any,
    ) -> None:
        """`inner`: the gated method's class (or a partial with its settings, as Hydra's `_partial_: true` gives);
        it is called with the rest of the arguments (student, task, optimizer, teacher, …)."""
        super().__init__()
        try:
            self.inner = inner(**inner_kwargs)
        except LabError as err:  # the inner method names its keys `method.<key>`; here they live under method.inner
            raise LabError(re.sub(r"(?<![\w.])method\.", "method.inner.", str(err))) from None
        if not isinstance(self.inner, AdapterModule):  # SLoRA around SLoRA included
            built = f"{type(self.inner).__module__}.{type(self.inner).__qualname__}"
            raise bad_value("method.inner._target_", built, "an AdapterModule subclass (finetune, kd, sad, …)")
        if lr_clock not in ("batches", "accepted"):
            raise bad_value("method.lr_clock", lr_clock, "'batches' or 'accepted'")
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold only trainable weights; the frozen base is rebuilt
        self.lr_clock, self.grad_clip = lr_clock, grad_clip
        self.lag = 0  # batches rejected since the last optimizer step (lr_clock=batches catches up on them)
        self.causal = self.task.generative
        n_out = int(self.student.config.vocab_size if self.causal else self.task.num_labels)
        head = find_head(self.student, n_out)
        self.gate = SLoRAGate(head.in_features, head.out_features, **dict(gate or {}))
        head.register_forward_hook(self._keep_head_io)
        self._capture, self._head_io = False, None
        self.curve: list[dict[str, float]] = []  # (accepted_steps, total_steps, val loss) at each validation

    # ----- what the run reads from its method (train.py, callbacks, optim=) is the inner method's ----------
    @property
    def student(self) -> nn.Module:
        return self.inner.student

    @property
    def task(self) -> TaskSpec:
        return self.inner.task

    @property
    def optimizer_factory(self) -> Callable[..., torch.optim.Optimizer]:
        return self.inner.optimizer_factory

    @optimizer_factory.setter
    def optimizer_factory(self, factory: Callable[..., torch.optim.Optimizer]) -> None:  # optim= wraps it
        self.inner.optimizer_factory = factory

    @property
    def _current_fx_name(self) -> str | None:
        return self.__dict__.get("_fx_name")

    @_current_fx_name.setter
    def _current_fx_name(self, name: str | None) -> None:
        """Lightning sets the running hook's name on the module it drives; the inner method's `self.log` needs it
        too (the Trainer itself reaches the inner method through LightningModule's `trainer` setter)."""
        self.__dict__["_fx_name"] = name
        inner = self.__dict__.get("_modules", {}).get("inner")
        if inner is not None:
            inner._current_fx_name = name

    def save_adapters(self, directory: str | Path) -> None:
        self.inner.save_adapters(directory)

    def _keep_head_io(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self._capture:
            self._head_io = (args[0].detach(), output.detach())

    # ----- the gated step ------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.inner(batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        """Forward → gate → (accepted) the inner method's loss, backward, step. A rejected batch costs the
        student's forward and the gate only: the method's loss (a teacher forward for KD/SAD, SAD's alignment,
        KaSA's regulariser) is computed after the decision unless a loss-floor mode needs it for the decision."""
        self._capture = True
        try:
            outputs = self.inner(batch)  # the inner method's student forward
            if self._head_io is None:
                raise bad_value(
                    "method.inner._target_",
                    type(self.inner).__name__,
                    "a method whose forward runs the student's head (SLAD's runs inside its loss: not gated)",
                )
            h, logits = self._head_io  # (B, H), (B, C) for seq-cls; (B, T, H), (B, T, V) for a causal LM
        finally:
            self._capture, self._head_io = False, None
        loss = None
        if self.gate.mode in ("loss_floor", "combined"):  # the floor compares the method's loss: it comes first
            loss = self.inner.regularized(batch, self.inner.training_loss(batch, outputs))
        labels = batch["labels"]
        if not self.causal and h.dim() == 3:  # a head applied per token, pooled afterwards: its last real token
            mask = batch["attention_mask"]  # (B, T); left or right padding
            last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)  # (B,)
            rows = torch.arange(h.shape[0], device=h.device)
            h, logits = h[rows, last], logits[rows, last]
        signal = loss.detach() if loss is not None else 0.0  # only the loss-floor modes read it
        accept, novelty = self.gate.decide(h, logits, labels, signal, causal=self.causal)
        del h, logits
        self.log_dict(
            {
                "gate/novelty": novelty,
                "gate/accept": float(accept),
                "gate/acceptance_rate": self.gate.acceptance_rate(),
                "gate/accepted_steps": float(self.gate.accepted_steps),
                "gate/total_steps": float(self.gate.total_steps),
            },
            on_step=True,
            on_epoch=False,
            batch_size=AdapterModule._bs(batch),
        )
        if not accept:
            self.lag += 1
            return None  # no loss, no backward, no optimizer / scheduler call; the graph goes with `outputs`
        if loss is None:
            loss = self.inner.regularized(batch, self.inner.training_loss(batch, outputs))  # + its logging
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.grad_clip is not None:  # method.grad_clip; else the inner method clips as it would ungated
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        else:
            self.inner.configure_gradient_clipping(optimizer)
        if scheduler is not None and self.lr_clock == "batches":
            for _ in range(self.lag):  # the LR the ungated run has at this batch
                scheduler.step()
        self.lag = 0
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return loss.detach()

    # ----- the inner method's hooks, forwarded --------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.inner.setup(stage)

    def configure_callbacks(self) -> Any:
        return self.inner.configure_callbacks()

    def configure_optimizers(self) -> Any:
        """The inner method's optimizer and schedule; resolves a fractional `burn_in` against the run length."""
        self.gate.set_run_length(max(1, int(self.trainer.estimated_stepping_batches)))
        return self.inner.configure_optimizers()

    def on_fit_start(self) -> None:
        self.inner.on_fit_start()
        self.gate.to(self.device)

    def on_train_start(self) -> None:
        self.inner.on_train_start()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.inner.on_train_batch_start(batch, batch_idx)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.inner.on_train_batch_end(outputs, batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        self.inner.on_train_epoch_end()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> Any:
        return self.inner.validation_step(batch, batch_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> Any:
        return self.inner.test_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self.inner.on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self.inner.on_test_epoch_end()

    # ----- val loss against accepted steps -------------------------------------------------------------
    def on_validation_end(self) -> None:
        self.inner.on_validation_end()
        loss = self.trainer.callback_metrics.get("val/loss")
        if self.trainer.sanity_checking or loss is None or self.trainer.state.fn != "fit":
            return
        point = {"accepted_steps": self.gate.accepted_steps, "total_steps": self.gate.total_steps}
        self.curve.append(point | {"val_loss": float(loss)})

    def on_train_end(self) -> None:
        self.inner.on_train_end()
        if self.trainer.is_global_zero and self.curve:
            save_curve(self.curve, Path(self.trainer.default_root_dir), self.gate.mode)

    # ----- checkpoint ----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.inner.on_save_checkpoint(checkpoint)  # its own state (train seconds, SAD's α schedule, …)
        trainable_only(self, checkpoint)  # the keys carry `inner.`: filtered here, where the names match
        curve = [dict(p) for p in self.curve]
        checkpoint["slora"] = {"gate": self.gate.state_dict(), "curve": curve, "lag": self.lag}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        require_own_weights(self, checkpoint)  # its keys carry `inner.`: the inner method sees them without it
        state = {k.removeprefix("inner."): v for k, v in checkpoint.get("state_dict", {}).items()}
        self.inner.on_load_checkpoint(dict(checkpoint, state_dict=state))
        if "slora" in checkpoint:
            self.gate.load_state_dict(checkpoint["slora"]["gate"])
            self.curve = [dict(p) for p in checkpoint["slora"]["curve"]]
            self.lag = int(checkpoint["slora"]["lag"])


def find_head(student: nn.Module, n_out: int) -> nn.Linear:
    """The model's final projection: the last nn.Linear with `n_out` outputs that is not a LoRA factor or a
    frozen copy kept by peft's modules_to_save."""
    skip = ("lora_", "original_module")
    heads = [
        m
        for name, m in student.named_modules()
        if isinstance(m, nn.Linear) and m.out_features == n_out and not any(s in name for s in skip)
    ]
    if not heads:
        raise bad_value("method", "slora", f"a model whose head is an nn.Linear with {n_out} outputs")
    return heads[-1]


def save_curve(curve: list[dict[str, float]], out_dir: Path, mode: str) -> Path:
    """Write `slora_curve.json` and a plot of val loss vs accepted steps into `out_dir`; returns the plot path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CURVE_FILE).write_text(json.dumps({"mode": mode, "points": curve}, indent=1))
    fig = Figure(figsize=(5, 3.5))  # Agg canvas, no pyplot: nothing global changes in the caller
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([p["accepted_steps"] for p in curve], [p["val_loss"] for p in curve], marker="o", label=mode)
    ax.set_xlabel("accepted steps (optimizer steps)")
    ax.set_ylabel("validation loss")
    ax.set_title(f"SLoRA gate: {mode}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / PLOT_FILE, dpi=100)
    return out_dir / PLOT_FILE
