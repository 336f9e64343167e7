"""Read labelled text tables (GLUE TSV, csv, json/jsonl, parquet) or the hub, and tokenise them once per
(tokenizer, max_length, rows) into a cache file that parallel sweep jobs share."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lowrank_lab.errors import LabError, bad_value

SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")
SPLIT_NAMES = {"train": ("train",), "dev": ("dev", "validation", "val")}


def _read(path: Path, names: tuple[str, ...] | None):
    import pandas as pd

    if path.suffix in (".tsv", ".csv"):
        sep = "\t" if path.suffix == ".tsv" else ","
        header = None if names else 0
        return pd.read_csv(
            path,
            sep=sep,
            quoting=3 if sep == "\t" else 0,
            header=header,
            names=names,
            dtype=str,
            keep_default_na=False,
        )
    if path.suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=path.suffix == ".jsonl")
    return pd.read_parquet(path)


def _find(folder: Path, split: str) -> Path | None:
    for stem in SPLIT_NAMES[split]:
        for suffix in SUFFIXES:
            if (folder / f"{stem}{suffix}").exists():
                return folder / f"{stem}{suffix}"
    return None


def _records(
    frame, columns: dict[str, str], label_map: dict[str, int] | None, where: Path, regression: bool
) -> list[dict]:
    frame = frame.rename(columns=columns)
    if "label" not in frame.columns:
        raise bad_value("data.path", str(where), f"needs a 'label' column; found {list(frame.columns)}")
    rows = frame.to_dict("records")
    for row in rows:
        label = row["label"]
        if label_map is not None and str(label) in label_map:
            row["label"] = label_map[str(label)]
        else:
            row["label"] = float(label) if regression else int(float(label))
    return rows


def load_table(
    path: Path,
    columns: dict[str, str],
    names: tuple[str, ...] | None,
    label_map: dict[str, int] | None,
    regression: bool = False,
) -> tuple[list[dict], list[dict], str]:
    """(train, dev, source) from a folder holding train.* and dev.*/validation.*, or from one file whose last
    10 % (seeded by file order) becomes dev."""
    if path.is_dir():
        train_file, dev_file = _find(path, "train"), _find(path, "dev")
        if train_file is None or dev_file is None:
            raise bad_value("data.path", str(path), f"a folder with train and dev files ending in {SUFFIXES}")
        stat = f"{train_file}:{train_file.stat().st_size}:{dev_file.stat().st_size}"
        train = _records(_read(train_file, names), columns, label_map, train_file, regression)
        dev = _records(_read(dev_file, names), columns, label_map, dev_file, regression)
        return train, dev, stat
    if path.suffix not in SUFFIXES:
        raise bad_value("data.path", str(path), f"a file ending in one of {SUFFIXES} or a folder of them")
    rows = _records(_read(path, names), columns, label_map, path, regression)
    cut = max(1, len(rows) // 10)
    return rows[:-cut], rows[-cut:], f"{path}:{path.stat().st_size}"


def load_hub_glue(task: str) -> tuple[list[dict], list[dict], str]:
    """GLUE through `datasets` for users with a network (or a warm cache); one clear line otherwise."""
    try:
        import datasets

        ds = datasets.load_dataset("glue", task)
    except Exception as err:
        raise LabError(
            f"data.task={task!r}: no local copy under paths.data_dir/glue and `datasets.load_dataset('glue', "
            f"{task!r})` failed ({type(err).__name__}); run `make data` or pass data.path=<folder of tsv files>"
        ) from None
    return [dict(r) for r in ds["train"]], [dict(r) for r in ds["validation"]], f"hub:glue/{task}"


def cached(cache_dir: Path, key: tuple, build: Callable[[], Any]) -> Any:
    """`build()` once per `key` (tokenised splits, generated images) into a cache file that sweep jobs share."""
    digest = hashlib.sha1(repr(key).encode()).hexdigest()[:16]
    cache = cache_dir / f"tok-{digest}.pt"
    if cache.exists():
        try:
            return torch.load(cache, weights_only=True)
        except Exception:
            pass  # a corrupt cache file is rebuilt below
    out = build()
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    os.close(fd)
    torch.save(out, tmp)
    os.replace(tmp, cache)  # atomic: parallel jobs never read a half-written file
    return out


def tokenize_cached(
    rows: list[dict], tokenizer, text_keys: tuple[str, ...], max_length: int, cache_dir: Path, key: tuple
) -> list[dict]:
    """Tokenise `rows` (truncating to max_length) or load the identical result from the cache."""

    def build() -> list[dict]:
        texts = [[str(r[k]) for r in rows] for k in text_keys]
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        return [{name: enc[name][i] for name in enc.keys()} | {"labels": rows[i]["label"]} for i in range(len(rows))]

    return cached(cache_dir, key, build)
