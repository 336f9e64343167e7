"""Where the trained method's own settings live in a run's config: `method`, or under a wrapper method's `inner`."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def method_key(cfg: DictConfig) -> str:
    """`method`, or `method.inner` (again for a wrapper around a wrapper) when `method` wraps another method
    (SLoRA): the key of the settings the run reads for its teacher (`<key>.teacher`), `n_calib`, …"""
    key = "method"
    while OmegaConf.select(cfg, f"{key}.inner._target_") is not None:
        key += ".inner"
    return key
