"""Semantic segmentation on a ViT encoder: a small conv decoder on the patch-token grid, upsampled to the mask.
A `PreTrainedModel`, so it saves/loads like any transformers model and a hub ViT checkpoint fills its encoder."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import ViTConfig, ViTModel, ViTPreTrainedModel
from transformers.modeling_outputs import SemanticSegmenterOutput


class ViTForPatchSegmentation(ViTPreTrainedModel):
    """pixel_values (B, C, H, W) -> logits (B, num_labels, H, W); labels (B, H, W) class ids, -100 ignored."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = ViTModel(config, add_pooling_layer=False)
        width = config.hidden_size
        self.decode_head = nn.Sequential(
            nn.Conv2d(width, width, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, config.num_labels, kernel_size=1),
        )
        self.post_init()

    @classmethod
    def from_config(cls, config: ViTConfig, **kwargs) -> ViTForPatchSegmentation:
        """Random init (same entry point as transformers' Auto classes)."""
        return cls._from_config(config, **kwargs)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> SemanticSegmenterOutput:
        out = self.vit(pixel_values, output_hidden_states=output_hidden_states)
        b, _, h, w = pixel_values.shape
        rows, cols = h // self.config.patch_size, w // self.config.patch_size
        tokens = out.last_hidden_state[:, 1:]  # drop [CLS]: (B, rows·cols, D)
        grid = tokens.transpose(1, 2).reshape(b, -1, rows, cols)  # (B, D, rows, cols)
        logits = F.interpolate(self.decode_head(grid), size=(h, w), mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels, ignore_index=-100) if labels is not None else None
        return SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
