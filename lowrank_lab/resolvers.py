"""OmegaConf resolvers the configs use, registered when `lowrank_lab` is imported (run.py imports it before Hydra
composes): `lab.stamp` makes job dirs unique per process, `lab.shquote` makes paths safe in shell lines."""

from __future__ import annotations

import os
import shlex
from datetime import datetime

from omegaconf import OmegaConf


def stamp(pattern: str = "%H-%M-%S") -> str:
    """`strftime(pattern)` plus microseconds and the pid: two processes started in the same second (or the same
    microsecond on two hosts, with different pids) get different job dirs. Cached per config like Hydra's `now`, so a
    process (and the jobs of one sweep, which copy the launcher's resolver cache) resolve it once."""
    now = datetime.now()
    return f"{now.strftime(pattern)}.{now.microsecond:06d}-{os.getpid()}"


def shquote(value: object) -> str:
    """`value` quoted for a POSIX shell line (sbatch `setup`): a path with spaces or quotes stays one word."""
    return shlex.quote("" if value is None else str(value))


def register() -> None:
    """Idempotent: importing lowrank_lab twice (or from a submitit worker) registers them once."""
    if not OmegaConf.has_resolver("lab.stamp"):
        OmegaConf.register_new_resolver("lab.stamp", stamp, use_cache=True)
    if not OmegaConf.has_resolver("lab.shquote"):
        OmegaConf.register_new_resolver("lab.shquote", shquote)
