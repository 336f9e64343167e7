"""Forgetting: how far adaptation moved a model away from its base on a reference set — representation drift
(1 − linear CKA of last-layer hidden states, any model), masked-LM loss under the pretrained MLM head (encoders
whose checkpoint has one) and reference perplexity (causal LMs). `ForgettingCallback` logs them as
`forgetting/…` at every validation end; the base is the same model under peft's `disable_adapter()`."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F

from lowrank_lab.metrics.cka import linear_cka

log = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]


def _inputs(batch: Batch) -> Batch:
    return {k: v for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def hidden_features(model: nn.Module, batches: Iterable[Batch]) -> torch.Tensor:
    """Last-layer hidden states of every real token (attention_mask = 1) or image patch: (N, D), float32."""
    rows = []
    for batch in batches:
        hidden = model(**_inputs(batch), output_hidden_states=True).hidden_states[-1]  # (B, T, D)
        mask = batch.get("attention_mask")
        rows.append(hidden[mask.bool()] if mask is not None else hidden.flatten(0, 1))
    return torch.cat(rows).float()


@torch.no_grad()
def reference_perplexity(model: nn.Module, batches: Iterable[Batch]) -> float:
    """exp(mean next-token NLL) of a causal LM over the labelled tokens (labels -100 are skipped)."""
    nll, count = 0.0, 0
    for batch in batches:
        logits = model(**_inputs(batch)).logits[:, :-1]  # (B, T-1, V): position t predicts t + 1
        target = batch["labels"][:, 1:]
        nll += float(F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), reduction="sum"))
        count += int((target != -100).sum())
    return math.exp(nll / max(count, 1))


@torch.no_grad()
def mlm_loss(
    model: nn.Module,
    head: nn.Module,
    batches: Iterable[Batch],
    mask_token_id: int,
    special_ids: list[int],
    mask_prob: float = 0.15,
    seed: int = 0,
) -> float:
    """Masked-LM loss of a fixed pretrained MLM `head` on the encoder's last hidden states; `mask_prob` of the real,
    non-special tokens are replaced by [MASK] (seeded, so base and adapted models see the same masks)."""
    generator = torch.Generator().manual_seed(seed)
    nll, count = 0.0, 0
    for batch in batches:
        ids = batch["input_ids"]
        real = batch["attention_mask"].bool() & ~torch.isin(ids, torch.tensor(special_ids, device=ids.device))
        masked = real & (torch.rand(ids.shape, generator=generator) < mask_prob).to(ids.device)
        inputs = {**_inputs(batch), "input_ids": ids.masked_fill(masked, mask_token_id)}
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]  # (B, T, D)
        logits = head(hidden[masked])  # (M, V)
        nll += float(F.cross_entropy(logits.float(), ids[masked], reduction="sum"))
        count += int(masked.sum())
    return nll / max(count, 1)


def load_mlm_head(name_or_path: str) -> nn.Module | None:
    """The pretrained MLM head of a checkpoint (BERT's `cls`, RoBERTa's `lm_head`), or None when it has none."""
    from transformers import AutoModelForMaskedLM

    from lowrank_lab.models import resolve_name_or_path

    try:
        mlm, info = AutoModelForMaskedLM.from_pretrained(resolve_name_or_path(name_or_path), output_loading_info=True)
    except Exception as err:  # not an encoder with an MLM architecture (causal LM, ViT, …)
        log.info("forgetting: no MLM head for %s (%s)", name_or_path, type(err).__name__)
        return None
    heads = {n: m for n, m in mlm.named_children() if n != mlm.base_model_prefix}
    missing = [k for k in info["missing_keys"] if k.split(".")[0] in heads]
    if missing or not heads:
        log.info("forgetting: %s has no pretrained MLM head weights; mlm_loss skipped", name_or_path)
        return None
    return next(iter(heads.values())).eval().requires_grad_(False)


@contextlib.contextmanager
def base_model(model: nn.Module) -> Iterator[nn.Module]:
    """The base model: peft's `disable_adapter()`; a model without adapters is its own base."""
    context = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    with context:
        yield model


class ForgettingCallback(L.Callback):
    """Logs forgetting/cka_drift, forgetting/mlm_loss(_base) and forgetting/perplexity(_base) at each validation
    end, on `datamodule.reference_dataloader()` (else the first val batches). Base values are computed once at
    train start (a fully fine-tuned model is still its base then)."""

    def __init__(
        self, mlm_head_from: str | None = None, mask_prob: float = 0.15, max_batches: int = 4, seed: int = 0
    ) -> None:
        self.mlm_head_from, self.mask_prob, self.max_batches, self.seed = mlm_head_from, mask_prob, max_batches, seed
        self.batches: list[Batch] | None = None
        self.head: nn.Module | None = None
        self.base: dict[str, Any] = {}

    def _reference(self, trainer: L.Trainer, causal: bool) -> list[Batch]:
        """The first `max_batches` reference batches (labels kept only for causal LMs' perplexity), cached."""
        if self.batches is None:
            dm = trainer.datamodule
            loader = dm.reference_dataloader() if hasattr(dm, "reference_dataloader") else dm.val_dataloader()
            self.batches = [b if causal else _inputs(b) for _, b in zip(range(self.max_batches), loader)]
            tokenizer = getattr(dm, "tokenizer", None)
            if self.mlm_head_from and getattr(tokenizer, "mask_token_id", None) is not None:
                self.head = load_mlm_head(self.mlm_head_from)
                self.mask_token_id, self.special_ids = tokenizer.mask_token_id, list(tokenizer.all_special_ids)
        return self.batches

    def _measure(self, model: nn.Module, batches: list[Batch]) -> dict[str, Any]:
        out: dict[str, Any] = {"features": hidden_features(model, batches)}
        if "labels" in batches[0]:
            out["perplexity"] = reference_perplexity(model, batches)
        if self.head is not None:
            self.head.to(out["features"].device)
            args = (self.mask_token_id, self.special_ids, self.mask_prob, self.seed)
            out["mlm_loss"] = mlm_loss(model, self.head, batches, *args)
        return out

    def _on_device(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[Batch]:
        task = getattr(pl_module, "task", None)
        batches = self._reference(trainer, causal=getattr(task, "generative", False))
        return [{k: v.to(pl_module.device) for k, v in b.items()} for b in batches]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "student", pl_module)
        batches = self._on_device(trainer, pl_module)
        was_training = model.training
        model.eval()
        with base_model(model) as base:
            self.base = self._measure(base, batches)
        model.train(was_training)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        model = getattr(pl_module, "student", pl_module)
        batches = self._on_device(trainer, pl_module)
        if not self.base:
            with base_model(model) as base:
                self.base = self._measure(base, batches)
        now = self._measure(model, batches)
        metrics = {"forgetting/cka_drift": 1.0 - float(linear_cka(self.base["features"], now["features"]))}
        for name in ("perplexity", "mlm_loss"):
            if name in now:
                metrics[f"forgetting/{name}"] = now[name]
                metrics[f"forgetting/{name}_base"] = self.base[name]
        pl_module.log_dict(metrics)
