"""Pretrained vision bases built offline: a tiny ViT pre-trained once on a self-supervised source task made from
the digits' train-split images (which of 8 rotations/mirrors was applied: no digit label is read), cached as a
model folder under `outputs/models/pretrain-<name>-<key>`; `model.name_or_path: pretrain:<name>` names one."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lowrank_lab.cache import atomic_write, get_or_build
from lowrank_lab.errors import bad_value
from lowrank_lab.models.resolve import models_dir

INFO_FILE = "pretrain.json"
TINY_VIT = {  # conf/model/tiny-vit.yaml's architecture
    "patch_size": 4,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "initializer_range": 0.2,
}


@dataclass(frozen=True)
class Recipe:
    """What determines the pre-trained weights (all of it is the cache key). Source task `dihedral`: each image
    under one of the 8 symmetries of the square (4 rotations × mirror), randomly shifted; predict which one."""

    config: dict[str, Any] = field(default_factory=lambda: dict(TINY_VIT))
    image_size: int = 32
    source: str = "dihedral"
    data_seed: int = 0  # the digits split of data=vision_cls (data.seed 0, val_fraction 0.2): train images only
    val_fraction: float = 0.2
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2.0e-3
    weight_decay: float = 0.05
    shift: int = 3  # pixels of random translation at image_size
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({"recipe": asdict(self), "format": 1}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


RECIPES: dict[str, Recipe] = {
    "tiny-vit-digits": Recipe(),  # conf/model/tiny-vit.yaml's 2-layer ViT
    "tiny-vit-digits-l4": Recipe(config={**TINY_VIT, "num_hidden_layers": 4}, epochs=20),  # slad_vision's teacher
}
SOURCES = {"dihedral": 8}


def transform(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """images (N, H, W) under symmetry `index` (N,) in 0..7: rotate by 90°·(i mod 4), mirror when i >= 4."""
    out = images.clone()
    for i in range(8):
        chosen = index == i
        if chosen.any():
            x = images[chosen].flip(-1) if i >= 4 else images[chosen]
            out[chosen] = torch.rot90(x, i % 4, dims=(-2, -1))
    return out


def shift(images: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Each image (N, H, W) translated by up to ±`pixels` in x and y (zero fill)."""
    if pixels == 0:
        return images
    n, h, w = images.shape
    padded = F.pad(images, (pixels, pixels, pixels, pixels))
    dy, dx = (torch.randint(0, 2 * pixels + 1, (n,), generator=generator) for _ in range(2))
    return torch.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def source_batches(recipe: Recipe, images: torch.Tensor, generator: torch.Generator):
    """One epoch of (pixel_values (B, 3, S, S), labels (B,)) for the source task, from train images (N, 8, 8)."""
    from lowrank_lab.data.digits import to_pixels

    size = (recipe.image_size, recipe.image_size)
    order = torch.randperm(len(images), generator=generator)
    for start in range(0, len(order), recipe.batch_size):
        batch = images[order[start : start + recipe.batch_size]]
        labels = torch.randint(0, SOURCES[recipe.source], (len(batch),), generator=generator)
        big = F.interpolate(transform(batch, labels)[:, None], size=size, mode="bilinear", align_corners=False)
        yield to_pixels(shift(big[:, 0], recipe.shift, generator)), labels


def train(recipe: Recipe, out: Path, name: str) -> dict[str, Any]:
    """Pre-train a fresh ViT on the source task with AdamW + cosine decay; save it to `out` with its info."""
    from tqdm.auto import tqdm
    from transformers import ViTConfig, ViTForImageClassification

    from lowrank_lab.data.digits import digits

    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    labels = SOURCES[recipe.source]
    config = ViTConfig(**recipe.config, image_size=recipe.image_size, num_labels=labels)
    model = ViTForImageClassification(config).train()
    images = digits(recipe.data_seed, recipe.val_fraction)["train"][0]  # the target's labels are never read
    steps = recipe.epochs * math.ceil(len(images) / recipe.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    bar = tqdm(total=steps, desc=f"pretrain {name} ({recipe.source})", file=sys.stderr, dynamic_ncols=True)
    correct = seen = 0
    for epoch in range(recipe.epochs):
        correct = seen = 0
        for pixels, target in source_batches(recipe, images, generator):
            logits = model(pixel_values=pixels).logits
            loss = F.cross_entropy(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            correct += int((logits.argmax(-1) == target).sum())
            seen += len(target)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", acc=f"{correct / seen:.3f}")
    bar.close()
    model.config.id2label = {i: f"source_{i}" for i in range(labels)}  # the target task re-initialises the head
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    model.eval().save_pretrained(out)
    info = {
        "name": name,
        "key": recipe.key(),
        "recipe": asdict(recipe),
        "source_train_accuracy": round(correct / max(seen, 1), 4),  # the last epoch's, augmented
        "steps": steps,
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info


def pretrained_dir(name: str, recipe: Recipe | None = None) -> Path:
    """Where recipe `name` (or an explicit `recipe`) is cached: `<models dir>/pretrain-<name>-<recipe key>`."""
    if name not in RECIPES:
        raise bad_value("model.name_or_path", f"pretrain:{name}", f"pretrain:<one of {sorted(RECIPES)}>")
    return models_dir() / f"pretrain-{name}-{(recipe or RECIPES[name]).key()}"


def pretrained(name: str, recipe: Recipe | None = None) -> Path:
    """The cached folder of `name`, pre-training it first if needed (under a file lock, saved atomically: parallel
    jobs build it once). `recipe` overrides the registered one (tests, ablations)."""
    target = pretrained_dir(name, recipe)  # one line for an unknown name
    recipe = recipe or RECIPES[name]

    def build() -> Path:
        info: dict[str, Any] = {}
        atomic_write(target, lambda tmp: info.update(train(recipe, tmp, name)), directory=True)
        print(
            f"pretrain: built {target} in {info['train_seconds']}s "
            f"(source {recipe.source} train accuracy {info['source_train_accuracy']:.3f})",
            file=sys.stderr,
            flush=True,
        )
        return target

    return get_or_build(target, build, load=_trained, what="pretrained base")


def _trained(folder: Path) -> Path:
    """`folder` when its pre-training finished (a readable pretrain.json); raises otherwise (it is built again)."""
    json.loads((folder / INFO_FILE).read_text())
    return folder


def with_overrides(name: str, **changes: Any) -> Recipe:
    """The registered recipe `name` with some fields changed (e.g. fewer epochs)."""
    return replace(RECIPES[name], **changes)
