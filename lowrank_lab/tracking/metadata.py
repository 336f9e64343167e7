"""What an MLflow user expects on a run besides params and metrics: a short name, Hydra's choices and the config's
`tags` as tags, the git commit and entry script (the UI's Source column), the dataset as an input (Dataset column)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
import zlib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lowrank_lab.tracking.store import mask_credentials

CHOICE_GROUPS = ("method", "peft", "init", "model", "data", "experiment")
COMMIT_TAG, DIRTY_TAG = "mlflow.source.git.commit", "lowrank_lab.git.dirty"


def hydra_choices() -> dict[str, str]:
    """Hydra's runtime choices of the groups a reader filters by (`method=sad`, …); empty outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {g: str(choices[g]) for g in CHOICE_GROUPS if choices.get(g) is not None}


def sweep_job_number() -> int | None:
    """This job's number in a multirun (`hydra.job.num`), None for a single run or outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return int(HydraConfig.get().job.num)


def config_tags(cfg: DictConfig) -> dict[str, str]:
    """`tags: [sad, glue, r8]` -> `{"sad": "true", "glue": "true", "r8": "true"}` (filter: `tags.sad = 'true'`)."""
    tags = cfg.get("tags") or []
    return {mask_credentials(str(t))[:250]: "true" for t in tags}


def git_tags(root: Path) -> dict[str, str]:
    """`mlflow.source.git.commit` and whether the tree had uncommitted changes (`lowrank_lab.git.dirty`); empty when
    `root` is not a git checkout or git is missing."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20, check=True)
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {COMMIT_TAG: commit, DIRTY_TAG: str(dirty).lower()}


def source_tags(root: Path) -> dict[str, str]:
    """The entry script (`run.py`, `eval.py`, relative to the repo when inside it) and the git tags."""
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    tags = {"mlflow.source.type": "LOCAL"}
    if script is not None and script.suffix == ".py":
        tags["mlflow.source.name"] = str(script.relative_to(root) if script.is_relative_to(root) else script)
    return tags | git_tags(root)


def repo_root(cfg: DictConfig) -> Path:
    """The checkout the job runs from: `paths.root_dir`, else LOWRANK_LAB_ROOT, else this package's parent."""
    root = OmegaConf.select(cfg, "paths.root_dir", default=None) or os.environ.get("LOWRANK_LAB_ROOT")
    return Path(root) if root else Path(__file__).resolve().parents[2]


# keys short_run_name shows in its own way; other keys an experiment file sweeps are shown as `<last part>=<value>`
NAMED_KEYS = {"method", "peft", "init", "data", "model", "experiment", "peft.lora_r", "seed"}


def swept_keys() -> list[str]:
    """The keys the experiment file sweeps (`hydra.sweeper.params`: arm, method.gate.mode, …; without a `+`/`~`
    prefix) that the run name does not show otherwise; empty outside a Hydra multirun."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    params = OmegaConf.select(HydraConfig.get(), "sweeper.params", default=None) or {}
    keys = [str(k).lstrip("+~") for k in params]
    return [k for k in keys if k not in NAMED_KEYS]


def short_run_name(cfg: DictConfig, choices: dict[str, str], number: int | None = None, swept: list[str] = ()) -> str:
    """`sad r=8 sst2 s0`: method, the peft entry and init when not the defaults (lora, default), the rank, the task,
    the `swept` keys' values (`arm=align`), the seed, and `#<n>` for job n of a sweep. The full overrides stay in the
    `overrides` tag."""
    target = str(OmegaConf.select(cfg, "method._target_", default="") or "")
    parts = [choices.get("method") or target.rsplit(".", 1)[-1].removesuffix("Module").lower() or "job"]
    if choices.get("peft") not in (None, "lora"):
        parts.append(choices["peft"])
    rank = OmegaConf.select(cfg, "peft.lora_r", default=None)
    if rank is not None and choices.get("peft") != "none":
        parts.append(f"r={rank}")
    if choices.get("init") not in (None, "default"):
        parts.append(choices["init"])
    task = OmegaConf.select(cfg, "data.task", default=None) or choices.get("data")
    if task:
        parts.append(str(task))
    for key in swept:
        parts.append(f"{key.rsplit('.', 1)[-1]}={OmegaConf.select(cfg, key, default=None)}")
    seed = OmegaConf.select(cfg, "seed", default=None)
    if seed is not None:
        parts.append(f"s{seed}")
    if number is not None:
        parts.append(f"#{number}")
    return " ".join(parts)


def _label_key(label: object) -> object:
    """A hashable stand-in for a label: token labels of a causal LM (a list) become a CRC of their ids."""
    import numpy as np

    if isinstance(label, list | tuple):
        return zlib.crc32(np.asarray(label, dtype=np.int64).tobytes())
    return label


def dataset_inputs(datamodule: Any, cfg: DictConfig) -> list[Any]:
    """One MLflow dataset input per split (context train/val/test): name = the task, digest = a hash of the rows'
    token ids and labels, source = the local data path, profile = the split's row count. Only for datamodules whose
    splits are in-memory tokenised rows (GLUE, instruction data); others (images, generated data) log none."""
    import numpy as np
    import pandas as pd
    from mlflow.data import from_pandas
    from mlflow.entities import DatasetInput, InputTag

    splits = getattr(datamodule, "splits", None) or {}
    rows = {s: splits[s] for s in ("train", "val", "test") if isinstance(splits.get(s), list)}
    if not rows or not all(r and isinstance(r[0], dict) and "input_ids" in r[0] for r in rows.values()):
        return []
    task = getattr(getattr(datamodule, "task", None), "name", None) or str(OmegaConf.select(cfg, "data.task"))
    source = getattr(datamodule, "path", None) or getattr(datamodule, "data_dir", None) or os.getcwd()
    frames, contexts = {}, {}  # val and test are often the same dev split: one input, context "val+test"
    for split, data in rows.items():
        frame = pd.DataFrame(
            {
                "tokens": [zlib.crc32(np.asarray(r["input_ids"], dtype=np.int64).tobytes()) for r in data],
                "labels": [_label_key(r.get("labels")) for r in data],
            }
        )
        key = (len(frame), int(pd.util.hash_pandas_object(frame, index=False).sum()))
        frames.setdefault(key, frame)
        contexts[key] = f"{contexts[key]}+{split}" if key in contexts else split
    inputs = []
    with warnings.catch_warnings():  # mlflow's hints about integer columns and ambiguous local sources
        warnings.simplefilter("ignore")
        for key, frame in frames.items():
            dataset = from_pandas(frame, source=mask_credentials(str(source)), name=task, targets="labels")
            context = [InputTag(key="mlflow.data.context", value=contexts[key])]
            inputs.append(DatasetInput(dataset=dataset._to_mlflow_entity(), tags=context))
    return inputs
