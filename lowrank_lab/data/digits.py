"""scikit-learn's bundled digits (1,797 real 8×8 images, 10 classes) as tensors, and the pixel layout ViTs read.
A leaf: the vision datamodules and the pre-trained vision base (models.pretrain) both read it."""

from __future__ import annotations

import torch


def digits(seed: int, val_fraction: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Seeded train/val split of the digits: images (N, 8, 8) in [0, 1], labels (N,)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(len(order) * (1.0 - val_fraction))
    return {"train": (images[order[:cut]], labels[order[:cut]]), "val": (images[order[cut:]], labels[order[cut:]])}


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) in [0, 1] -> (N, 3, H, W) normalised to [-1, 1], the layout ViT image processors produce."""
    return ((images - 0.5) / 0.5).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
