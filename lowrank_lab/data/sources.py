"""Read labelled text tables (GLUE TSV, csv, json/jsonl, parquet) or the hub, and tokenise them once per
(file contents, tokenizer, max_length, rows) into a cache file that parallel sweep jobs share."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lowrank_lab.cache import file_digest, get_or_build, key_digest
from lowrank_lab.errors import LabError, bad_value

SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")
SPLIT_NAMES = {"train": ("train",), "dev": ("dev", "validation", "val")}


def _read(path: Path, names: tuple[str, ...] | None, key: str = "data.path"):
    """The file as a DataFrame (text columns as str); an empty or unparsable file is one line naming it."""
    import pandas as pd

    if path.stat().st_size == 0:
        raise bad_value(key, str(path), f"a non-empty {path.suffix} file (this one has 0 bytes)")
    try:
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
    except (ValueError, OSError, pd.errors.ParserError) as err:  # EmptyDataError is a ValueError
        raise bad_value(key, str(path), f"a readable {path.suffix} table ({type(err).__name__}: {err})") from None


def _find(folder: Path, split: str) -> Path | None:
    for stem in SPLIT_NAMES[split]:
        for suffix in SUFFIXES:
            if (folder / f"{stem}{suffix}").exists():
                return folder / f"{stem}{suffix}"
    return None


def source_id(*files: Path) -> str:
    """`<path>@<hash of its bytes>` per file: names the source in messages and keys the tokenisation cache by
    content (a file rewritten at the same size with other labels gets fresh tokens)."""
    return " + ".join(f"{f}@{file_digest(f)[:16]}" for f in files)


def _label(value: Any, label_map: dict[str, int] | None, regression: bool, num_labels: int) -> int | float | None:
    """The label as the task's number (a class id in 0..num_labels-1, or a finite score), None if it is not one."""
    if label_map is not None and str(value) in label_map:
        return label_map[str(value)]
    try:
        number = float(value)
    except (TypeError, ValueError):  # None, "", "positive"
        return None
    if not math.isfinite(number) or isinstance(value, bool):
        return None
    if regression:
        return number
    return int(number) if number.is_integer() and 0 <= number < num_labels else None


def _records(
    frame,
    columns: dict[str, str],
    label_map: dict[str, int] | None,
    where: Path,
    regression: bool,
    text_keys: tuple[str, ...] = (),
    num_labels: int = 2,
    key: str = "data.path",
) -> list[dict]:
    """Rows with the task's text columns and a valid label each; the first bad row is refused in one line."""
    frame = frame.rename(columns=columns)
    missing = [c for c in (*text_keys, "label") if c not in frame.columns]
    if missing:
        needed = ", ".join((*text_keys, "label"))
        raise bad_value(
            key, str(where), f"needs columns {needed} (missing {', '.join(missing)}); found {list(frame.columns)}"
        )
    if regression:
        allowed = "a finite number (the score)"
    else:
        allowed = f"an integer class id in 0..{num_labels - 1}" + (
            f" or one of {sorted(label_map)}" if label_map else ""
        )
    rows = frame.to_dict("records")
    for i, row in enumerate(rows):
        label = _label(row["label"], label_map, regression, num_labels)
        if label is None:
            raise bad_value(key, str(where), f"row {i + 1} has label={row['label']!r}; allowed: {allowed}")
        row["label"] = label
    return rows


def load_table(
    path: Path,
    columns: dict[str, str],
    names: tuple[str, ...] | None,
    label_map: dict[str, int] | None,
    regression: bool = False,
    text_keys: tuple[str, ...] = (),
    num_labels: int = 2,
    key: str = "data.path",
) -> tuple[list[dict], list[dict], str]:
    """(train, dev, source) from a folder holding train.* and dev.*/validation.*, or from one file whose last
    10 % (seeded by file order) becomes dev. Every row must have `text_keys` and a label of the task's label set."""
    layout = (columns, label_map)
    task = (regression, text_keys, num_labels, key)
    if path.is_dir():
        train_file, dev_file = _find(path, "train"), _find(path, "dev")
        if train_file is None or dev_file is None:
            raise bad_value(key, str(path), f"a folder with train and dev files ending in {SUFFIXES}")
        train = _records(_read(train_file, names, key), *layout, train_file, *task)
        dev = _records(_read(dev_file, names, key), *layout, dev_file, *task)
        return train, dev, source_id(train_file, dev_file)
    if path.suffix not in SUFFIXES:
        raise bad_value(key, str(path), f"a file ending in one of {SUFFIXES} or a folder of them")
    rows = _records(_read(path, names, key), *layout, path, *task)
    cut = max(1, len(rows) // 10)
    return rows[:-cut], rows[-cut:], source_id(path)


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
    """`build()` once per `key` (tokenised splits) into `<cache_dir>/tok-<hash of key>.pt`, which sweep jobs share;
    `key` names the data by content (source_id), so a rewritten file is tokenised again."""
    return get_or_build(
        cache_dir / f"tok-{key_digest(key)}.pt",
        build,
        load=lambda path: torch.load(path, weights_only=True),
        save=torch.save,
        what="tokenised data",
    )


def tokenize_cached(
    rows: list[dict], tokenizer, text_keys: tuple[str, ...], max_length: int, cache_dir: Path, key: tuple
) -> list[dict]:
    """Tokenise `rows` (truncating to max_length) or load the identical result from the cache."""

    def build() -> list[dict]:
        texts = [[str(r[k]) for r in rows] for k in text_keys]
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        return [{name: enc[name][i] for name in enc.keys()} | {"labels": rows[i]["label"]} for i in range(len(rows))]

    return cached(cache_dir, key, build)
