"""Vision workloads from scikit-learn's bundled digits (1,797 real 8×8 images, 10 classes), offline and seeded:
classification (digits upsampled to the model's image size) and segmentation (digits composed onto a canvas,
pixel masks as labels: class = digit + 1 on the digit's pixels, 0 background)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from lowrank_lab.data.base import SplitDataModule, check_limits
from lowrank_lab.data.digits import digits, to_pixels
from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import bad_value


def compose(
    images: torch.Tensor, labels: torch.Tensor, count: int, size: int, per_image: int, scale: tuple[int, int], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` canvases (size × size) with 1..per_image random digits each, rescaled to a side in `scale`; returns
    images (count, size, size) and masks (count, size, size) with digit + 1 where the digit is on (> 0.3)."""
    rng = np.random.default_rng(seed)
    canvas = torch.zeros(count, size, size)
    masks = torch.zeros(count, size, size, dtype=torch.long)
    for n in range(count):
        for _ in range(rng.integers(1, per_image + 1)):
            i, side = int(rng.integers(len(labels))), int(rng.integers(scale[0], scale[1] + 1))
            glyph = F.interpolate(images[i][None, None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]
            y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            on = glyph > 0.3
            canvas[n, y : y + side, x : x + side] = torch.where(on, glyph, canvas[n, y : y + side, x : x + side])
            masks[n, y : y + side, x : x + side][on] = int(labels[i]) + 1  # a later digit covers an earlier one
    return canvas, masks


class DigitsDataModule(SplitDataModule):
    """Shared set-up: image size check, seeded digit split; `test` is the val split."""

    kind = ""

    def __init__(
        self,
        image_size: int | None = 32,
        val_fraction: float = 0.2,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_limit: int | None = None,
        val_limit: int | None = None,
        reference_examples: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed, reference_examples)
        if not isinstance(image_size, int) or image_size < 8:
            raise bad_value("data.image_size", image_size, "an integer >= 8 (set by a vision model: model=tiny-vit)")
        if not 0.0 < val_fraction < 1.0:
            raise bad_value("data.val_fraction", val_fraction, "a number in (0, 1)")
        self.image_size, self.val_fraction = image_size, val_fraction
        check_limits(train_limit=train_limit, val_limit=val_limit)
        self.train_limit, self.val_limit = train_limit, val_limit
        self.collate = default_collate

    def _limit(self, split: str, n: int) -> int:
        limit = self.train_limit if split == "train" else self.val_limit
        return n if limit is None else min(n, limit)

    def make_split(self, split: str, images: torch.Tensor, labels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for split, (images, labels) in digits(self.seed, self.val_fraction).items():
            self.splits[split] = self.make_split(split, images, labels)
        self.splits["test"] = self.splits["val"]


class DigitsClassificationDataModule(DigitsDataModule):
    """`data=vision_cls`: pixel_values (B, 3, S, S), labels (B,) in 0..9."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.task = TaskSpec(name="digits", num_labels=10, metric="accuracy", metrics=("accuracy",), kind="image_cls")

    def make_split(self, split: str, images: torch.Tensor, labels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        n = self._limit(split, len(labels))
        size = (self.image_size, self.image_size)
        pixels = to_pixels(F.interpolate(images[:n, None], size=size, mode="bilinear", align_corners=False)[:, 0])
        return [{"pixel_values": pixels[i], "labels": labels[i]} for i in range(n)]


class DigitsSegmentationDataModule(DigitsDataModule):
    """`data=vision_seg`: pixel_values (B, 3, S, S), labels (B, S, S) in 0..10 (0 = background)."""

    def __init__(
        self,
        num_train: int = 1000,
        num_val: int = 200,
        digits_per_image: int = 3,
        digit_scale: tuple[int, int] | list[int] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        low, high = digit_scale or (self.image_size // 3, self.image_size // 2)
        if not 4 <= low <= high <= self.image_size:
            raise bad_value("data.digit_scale", digit_scale, f"[low, high] with 4 <= low <= high <= {self.image_size}")
        self.counts = {"train": num_train, "val": num_val}
        self.digits_per_image, self.digit_scale = digits_per_image, (int(low), int(high))
        self.task = TaskSpec(
            name="digits_seg", num_labels=11, metric="miou", metrics=("miou", "pixel_accuracy"), kind="image_seg"
        )

    def make_split(self, split: str, images: torch.Tensor, labels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        count = self._limit(split, self.counts[split])
        seed = self.seed * 2 + (split == "val")  # different canvases per split, from disjoint digit pools
        canvas, masks = compose(images, labels, count, self.image_size, self.digits_per_image, self.digit_scale, seed)
        pixels = to_pixels(canvas)
        return [{"pixel_values": pixels[i], "labels": masks[i]} for i in range(count)]
