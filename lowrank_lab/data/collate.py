"""Pad a list of tokenised examples into one batch (dynamic padding to the longest example)."""

from __future__ import annotations

import torch

PAD_VALUES = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "labels": -100}


class PadCollator:
    """Collate dicts of 1-D token lists; scalar `labels` stay scalars (long, or float for regression)."""

    def __init__(self, pad_token_id: int, regression: bool = False) -> None:
        self.pad_token_id = pad_token_id
        self.regression = regression

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        longest = max(len(e["input_ids"]) for e in examples)
        for key in examples[0]:
            values = [e[key] for e in examples]
            if key == "labels" and not isinstance(values[0], list):
                dtype = torch.float32 if self.regression else torch.long
                batch[key] = torch.tensor(values, dtype=dtype)
                continue
            pad = self.pad_token_id if PAD_VALUES.get(key) is None else PAD_VALUES[key]
            out = torch.full((len(values), longest), pad, dtype=torch.long)
            for i, v in enumerate(values):
                out[i, : len(v)] = torch.as_tensor(v, dtype=torch.long)
            batch[key] = out
        return batch
