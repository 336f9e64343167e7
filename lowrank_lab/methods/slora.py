"""`method=slora`: SLoRA's pre-backward gate around the objective of any method (`method.base`, default finetune).

One forward with grad per batch; the gate (`slora_gate.SLoRAGate`) reads the detached input and output of the
head's final linear layer, i.e. exactly what the head consumes: for BERT sequence classification the pooled
[CLS] vector tanh(W_p h_[CLS]) after dropout, (B, H), one token per example (it is not in `hidden_states`); for
RoBERTa the input of `classifier.out_proj`; for a causal LM the last hidden state (B, T, H) = hidden_states[-1],
every labelled token. On accept: the gated method's loss, backward, clipping, optimizer and scheduler step. On reject
the step returns after the forward and the gate: no loss (in the novelty / none modes the decision does not need it,
so a teacher forward or an alignment term is not paid for), no backward; parameters, optimizer state (Adam moments)
and scheduler are untouched and the graph is freed.

Manual optimisation: `trainer.global_step` (hence `trainer.max_steps` and checkpoint names) counts optimizer
steps, i.e. accepted batches; bound runs with `max_epochs`. Clip with `method.grad_clip` (Lightning refuses
`trainer.gradient_clip_val` under manual optimisation). The LR schedule's clock (`method.lr_clock`): `batches`
(default) keeps the LR a function of the batches seen, as in the ungated run: an accepted step first advances the
scheduler over the batches rejected since the previous step, so every mode ends its schedule with the data whatever
its realised acceptance rate; `accepted` advances it once per optimizer step (the schedule then stops short under
gating). The gated method keeps every argument of its own (SAD's `alpha_schedule`, SLAD's `training`, …).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lowrank_lab.errors import bad_value
from lowrank_lab.methods.base import AdapterModule
from lowrank_lab.methods.finetune import FinetuneModule
from lowrank_lab.methods.slora_gate import SLoRAGate

PLOT_FILE, CURVE_FILE = "slora_val_loss_vs_accepted_steps.png", "slora_curve.json"


class SLoRAModule(FinetuneModule):
    """L = the base method's training loss, back-propagated only for batches the gate accepts (SLoRA)."""

    _base: str = "finetune"

    def __new__(cls, *args: Any, base: str = "finetune", **kwargs: Any) -> SLoRAModule:
        # `SLoRAModule(base="kd", …)` builds an instance of SLoRAModule-on-DistillationModule (see gated_class).
        return super().__new__(gated_class(base) if cls is SLoRAModule else cls)

    def __init__(
        self,
        *args: Any,
        base: str = "finetune",
        gate: Mapping[str, Any] | None = None,
        lr_clock: str = "batches",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)  # the base method's own arguments (student, task, optimizer, teacher, …)
        if lr_clock not in ("batches", "accepted"):
            raise bad_value("method.lr_clock", lr_clock, "'batches' or 'accepted'")
        self.automatic_optimization = False
        self.lr_clock = lr_clock
        self.lag = 0  # batches rejected since the last optimizer step (lr_clock=batches catches up on them)
        self.causal = self.task.generative
        n_out = int(self.student.config.vocab_size if self.causal else self.task.num_labels)
        head = find_head(self.student, n_out)
        self.gate = SLoRAGate(head.in_features, head.out_features, **dict(gate or {}))
        head.register_forward_hook(self._keep_head_io)
        self._capture, self._head_io = False, None
        self.curve: list[dict[str, float]] = []  # (accepted_steps, total_steps, val loss) at each validation

    def _keep_head_io(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self._capture:
            self._head_io = (args[0].detach(), output.detach())

    # ----- the gated step ------------------------------------------------------------------------------
    wraps_training_step = True  # gates AdapterModule's step; the loss it backpropagates is still self.regularized(…)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        """Forward → gate → (accepted) the method's loss, backward, step. A rejected batch costs the student's
        forward and the gate only: the method's loss (a teacher forward for KD/SAD, SAD's alignment, KaSA's
        regulariser) is computed after the decision unless a loss-floor mode needs it for the decision."""
        self._capture = True
        try:
            outputs = self(batch)  # the gated method's student forward
            h, logits = self._head_io  # (B, H), (B, C) for seq-cls; (B, T, H), (B, T, V) for a causal LM
        finally:
            self._capture, self._head_io = False, None
        loss = None
        if self.gate.mode in ("loss_floor", "combined"):  # the floor compares the method's loss: it comes first
            loss = self.regularized(batch, self.training_loss(batch, outputs))
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
            batch_size=self._bs(batch),
        )
        if not accept:
            self.lag += 1
            return None  # no loss, no backward, no optimizer / scheduler call; the graph goes with `outputs`
        if loss is None:
            loss = self.regularized(batch, self.training_loss(batch, outputs))  # the method's loss (+ its logging)
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        self.configure_gradient_clipping(optimizer)  # clip_gradients(norm) when method.grad_clip is set
        if scheduler is not None and self.lr_clock == "batches":
            for _ in range(self.lag):  # the LR the ungated run has at this batch
                scheduler.step()
        self.lag = 0
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return loss.detach()

    # ----- optimisation --------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """The base method's optimizer and schedule; resolves a fractional `burn_in` against the run length."""
        self.gate.set_run_length(max(1, int(self.trainer.estimated_stepping_batches)))
        return super().configure_optimizers()

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.gate.to(self.device)

    # ----- val loss against accepted steps -------------------------------------------------------------
    def on_validation_end(self) -> None:
        super().on_validation_end()
        loss = self.trainer.callback_metrics.get("val/loss")
        if self.trainer.sanity_checking or loss is None or self.trainer.state.fn != "fit":
            return
        point = {"accepted_steps": self.gate.accepted_steps, "total_steps": self.gate.total_steps}
        self.curve.append(point | {"val_loss": float(loss)})

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.trainer.is_global_zero and self.curve:
            save_curve(self.curve, Path(self.trainer.default_root_dir), self.gate.mode)

    # ----- checkpoint ----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        curve = [dict(p) for p in self.curve]
        checkpoint["slora"] = {"gate": self.gate.state_dict(), "curve": curve, "lag": self.lag}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "slora" in checkpoint:
            self.gate.load_state_dict(checkpoint["slora"]["gate"])
            self.curve = [dict(p) for p in checkpoint["slora"]["curve"]]
            self.lag = int(checkpoint["slora"]["lag"])

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Pickle a gated class built at run time (ddp_spawn, deepcopy) by its base's name."""
        reduced = super().__reduce_ex__(protocol)
        if type(self) is SLoRAModule:
            return reduced
        return (_new_gated, (type(self)._base,), *reduced[2:])


# ----- which method is gated -----------------------------------------------------------------------------
_GATED: dict[str, type[SLoRAModule]] = {}


def gated_class(base: str) -> type[SLoRAModule]:
    """SLoRAModule on top of the method class `base`: a name (`finetune`, `kd`: the AdapterModule subclass
    defined in `lowrank_lab.methods.<name>`) or a dotted class path. The MRO puts SLoRA's step first, so
    `training_loss`, hooks and extra arguments are the base method's."""
    if base not in _GATED:
        cls = _resolve_base(base)
        if issubclass(cls, SLoRAModule):
            raise bad_value("method.base", base, "a method other than slora")
        if issubclass(FinetuneModule, cls):  # AdapterModule's loss is finetune's
            _GATED[base] = SLoRAModule
        else:
            _GATED[base] = type(f"SLoRA{cls.__name__}", (SLoRAModule, cls), {"_base": base, "__module__": __name__})
    return _GATED[base]


def _resolve_base(base: str) -> type:
    allowed = "a method name (finetune, kd, …) or the dotted path of an AdapterModule subclass"
    name = str(base)
    module_name, _, attr = name.rpartition(".") if "." in name else (f"lowrank_lab.methods.{name}", "", "")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if module_name.startswith(str(err.name)):
            raise bad_value("method.base", base, allowed) from None
        raise
    if attr:
        cls = getattr(module, attr, None)
        found = [cls] if isinstance(cls, type) and issubclass(cls, AdapterModule) else []
    else:
        found = [
            c
            for c in vars(module).values()
            if isinstance(c, type) and issubclass(c, AdapterModule) and c.__module__ == module.__name__
        ]
    if len(found) != 1:
        raise bad_value("method.base", base, allowed + (f"; {module_name} defines {len(found)}" if found else ""))
    return found[0]


def _new_gated(base: str) -> SLoRAModule:
    cls = gated_class(base)
    return object.__new__(cls)


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
