"""The pre-trained vision base (models.pretrain): the source task's inputs are transformed train-split digits with
the right symmetry label (never a val image), the base is built once per recipe key and loads into both vision heads,
and LoRA on it learns the 10 digits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lowrank_lab.data.digits import digits, to_pixels
from lowrank_lab.errors import LabError
from lowrank_lab.models import load_backbone, pretrain, resolve_name_or_path
from lowrank_lab.models.pretrain import INFO_FILE, RECIPES, Recipe, pretrained, pretrained_dir
from tests.conftest import mlflow_runs, run_cli

TINY = Recipe(config={**RECIPES["tiny-vit-digits"].config, "num_hidden_layers": 1}, epochs=1, batch_size=512)


def test_transform_is_the_dihedral_group() -> None:
    image = torch.arange(16.0).reshape(1, 4, 4)
    out = [pretrain.transform(image, torch.tensor([i]))[0] for i in range(8)]
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8  # an asymmetric image has 8 distinct images
    assert torch.equal(out[1], image[0].rot90(1)) and torch.equal(out[4], image[0].flip(-1))
    assert torch.equal(out[6], image[0].flip(-1).rot90(2))


def test_source_inputs_are_labelled_train_images_only() -> None:
    recipe = Recipe(shift=0, batch_size=64)
    split = digits(recipe.data_seed, recipe.val_fraction)
    pixels, labels = next(pretrain.source_batches(recipe, split["train"][0], torch.Generator().manual_seed(0)))

    def all_views(images: torch.Tensor) -> torch.Tensor:  # (8·N, S·S): every symmetry of every image, upsampled
        views = torch.cat([pretrain.transform(images, torch.full((len(images),), i)) for i in range(8)])
        return to_pixels(F.interpolate(views[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0])[
            :, 0
        ].flatten(1)

    train_views, val_views = all_views(split["train"][0]), all_views(split["val"][0])
    inputs, n = pixels[:, 0].flatten(1), len(split["train"][0])
    exact = "donot_use_mm_for_euclid_dist"
    for x, label in zip(inputs, labels.tolist(), strict=True):  # a transformed train image, under its own label …
        assert torch.cdist(x[None], train_views[label * n : (label + 1) * n], compute_mode=exact).min() < 1e-5
    assert (torch.cdist(inputs, val_views, compute_mode=exact).min(dim=1).values > 1e-3).all()  # … never a val one


def test_cache_key_follows_the_recipe() -> None:
    base = RECIPES["tiny-vit-digits"]
    assert base.key() == Recipe().key() and pretrained_dir("tiny-vit-digits") == pretrained_dir("tiny-vit-digits", base)
    keys = {base.key(), pretrain.with_overrides("tiny-vit-digits", epochs=1).key(), RECIPES["tiny-vit-digits-l4"].key()}
    keys.add(Recipe(config={**base.config, "hidden_size": 64}).key())
    assert len(keys) == 4
    with pytest.raises(LabError, match=r"^model\.name_or_path='pretrain:nope': .*tiny-vit-digits"):
        resolve_name_or_path("pretrain:nope")


def test_built_once_then_reused_and_loads_into_both_heads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOWRANK_LAB_MODELS", str(tmp_path))
    path = pretrained("tiny-vit-digits", TINY)
    assert path == tmp_path / f"pretrain-tiny-vit-digits-{TINY.key()}" and (path / INFO_FILE).exists()
    stamps = {f.name: f.stat().st_mtime_ns for f in path.iterdir()}
    assert pretrained("tiny-vit-digits", TINY) == path
    assert {f.name: f.stat().st_mtime_ns for f in path.iterdir()} == stamps  # not rebuilt
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left behind

    from safetensors.torch import load_file

    saved = load_file(path / "model.safetensors")
    for head, labels in (("image_cls", 10), ("image_seg", 11)):
        model = load_backbone(str(path), head=head, num_labels=labels, image_size=32).model
        loaded = list(model.state_dict().values())  # transformers renames ViT modules on load: match by value
        encoder = [t for k, t in saved.items() if k.startswith("vit.")]
        assert len(encoder) > 20 and all(any(_same(t, u) for u in loaded) for t in encoder)
        assert model.config.num_hidden_layers == 1 and model.config.num_labels == labels


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


@pytest.mark.slow
def test_lora_on_the_pretrained_base_learns_the_digits(tmp_path: Path) -> None:
    args = ["model=tiny-vit-pre", "data=vision_cls", "threads=1", "trainer.max_epochs=3", "method.optimizer.lr=3e-3"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = mlflow_runs(tmp_path)
    accuracy, baseline = run.data.metrics["test/accuracy"], run.data.metrics["baseline/accuracy"]
    assert run.data.tags["lowrank_lab.learned"] == "true" and accuracy > baseline + 0.3, (accuracy, baseline)
