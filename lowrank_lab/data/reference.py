"""Reference text for forgetting metrics: held-out passages of general text (the end of a .txt file, or the last
rows of a jsonl/csv with their string fields joined), tokenised into model inputs."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from lowrank_lab.data.collate import PadCollator
from lowrank_lab.errors import bad_value


def reference_texts(path: str | Path, num: int, chars: int = 600) -> list[str]:
    """`num` passages of about `chars` characters from the end of `path` (held out from the head of the file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise bad_value("data.reference_path", str(path), "an existing .txt, .jsonl, .json, .csv or .parquet file")
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8")[-num * chars :]
        return [text[i : i + chars].strip() for i in range(0, len(text), chars)][-num:]
    from lowrank_lab.data.sources import _read

    rows = _read(path, None).to_dict("records")[-num:]
    return [" ".join(str(v) for v in row.values() if isinstance(v, str)) for row in rows]


def reference_loader(tokenizer, texts: list[str], max_length: int, batch_size: int, causal: bool = False) -> DataLoader:
    """Tokenised `texts` as padded batches; causal LMs also get `labels` (the inputs, -100 on padding)."""
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    rows = [{k: enc[k][i] for k in enc.keys()} for i in range(len(texts))]
    if causal:
        for row in rows:
            row["labels"] = list(row["input_ids"])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=PadCollator(pad))
