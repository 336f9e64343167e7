"""Digits vision datamodules: classification batches at the model's image size, segmentation canvases whose masks
match the pasted digits' pixels, seeded and reproducible."""

from __future__ import annotations

import pytest
import torch

from lowrank_lab.data import DigitsClassificationDataModule, DigitsSegmentationDataModule
from lowrank_lab.data.digits import digits
from lowrank_lab.data.vision import compose
from lowrank_lab.errors import LabError


def test_classification_batches() -> None:
    dm = DigitsClassificationDataModule(image_size=16, batch_size=8, train_limit=40, val_limit=20, seed=1)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (8, 3, 16, 16) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].shape == (8,) and batch["labels"].dtype == torch.long
    assert batch["pixel_values"].min() >= -1.0 and batch["pixel_values"].max() <= 1.0
    assert (len(dm.splits["train"]), len(dm.splits["val"])) == (40, 20) and dm.task.num_labels == 10
    assert dm.task.kind == "image_cls" and dm.task.monitor == "val/accuracy"
    reference = next(iter(dm.reference_dataloader()))
    assert set(reference) == {"pixel_values"}


def test_digit_split_is_seeded_and_disjoint() -> None:
    a, b = digits(seed=3, val_fraction=0.2), digits(seed=3, val_fraction=0.2)
    assert torch.equal(a["train"][0], b["train"][0]) and len(a["train"][1]) + len(a["val"][1]) == 1797
    assert not torch.equal(a["train"][0][:5], digits(seed=4, val_fraction=0.2)["train"][0][:5])
    train, val = a["train"][0].flatten(1), a["val"][0].flatten(1)
    assert not (torch.cdist(val[:50], train) == 0).all(dim=1).any()  # no val image reappears in train


def test_compose_masks_follow_digit_pixels() -> None:
    images, labels = digits(seed=0, val_fraction=0.2)["train"]
    canvas, masks = compose(images, labels, count=20, size=32, per_image=3, scale=(10, 16), seed=0)
    assert canvas.shape == masks.shape == (20, 32, 32) and masks.dtype == torch.long
    assert ((canvas > 0.3) == (masks > 0)).all()  # labelled exactly where a digit is "on"
    assert int(masks.max()) <= 10 and (masks == 0).any() and len(masks.unique()) > 3
    again, again_masks = compose(images, labels, count=20, size=32, per_image=3, scale=(10, 16), seed=0)
    assert torch.equal(canvas, again) and torch.equal(masks, again_masks)


def test_segmentation_batches() -> None:
    dm = DigitsSegmentationDataModule(image_size=32, num_train=24, num_val=8, batch_size=8, seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (8, 3, 32, 32) and batch["labels"].shape == (8, 32, 32)
    assert batch["labels"].dtype == torch.long and int(batch["labels"].max()) <= 10
    assert dm.task.num_labels == 11 and dm.task.metric == "miou" and dm.task.kind == "image_seg"
    assert (len(dm.splits["train"]), len(dm.splits["val"])) == (24, 8)


@pytest.mark.parametrize("kwargs", [{"image_size": None}, {"image_size": 4}, {"val_fraction": 1.5}])
def test_bad_vision_options_are_one_line(kwargs: dict) -> None:
    with pytest.raises(LabError, match=r"^data\.(image_size|val_fraction)="):
        DigitsClassificationDataModule(**({"image_size": 32} | kwargs))
    with pytest.raises(LabError, match=r"^data\.digit_scale="):
        DigitsSegmentationDataModule(image_size=16, digit_scale=[4, 20])
