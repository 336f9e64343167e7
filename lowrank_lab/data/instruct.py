"""Instruction data for causal LMs: prompt/response pairs (jsonl/csv/parquet, or a `datasets` name), the loss
masked to the response tokens; GSM8K-style `#### <answer>` responses also get an exact-match probe."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from lowrank_lab.data.base import SplitDataModule, check_limits, load_tokenizer
from lowrank_lab.data.collate import PadCollator
from lowrank_lab.data.reference import reference_loader, reference_texts
from lowrank_lab.data.sources import _read, cached, source_id
from lowrank_lab.data.task import GenerationProbe, TaskSpec, final_answer
from lowrank_lab.errors import LabError, bad_value

IGNORE = -100
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
VAL_STEMS = ("val", "validation", "dev", "test")


def _alpaca(row: dict) -> tuple[str, str]:
    context = f"### Input:\n{row['input']}\n\n" if str(row.get("input") or "").strip() else ""
    return f"### Instruction:\n{row['instruction']}\n\n{context}### Response:\n", str(row["output"])


# format name -> (columns it needs, row -> (prompt, response)); `format: auto` takes the first whose columns exist
FORMATS: dict[str, tuple[tuple[str, ...], Callable[[dict], tuple[str, str]]]] = {
    "prompt_response": (("prompt", "response"), lambda r: (str(r["prompt"]), str(r["response"]))),
    "alpaca": (("instruction", "output"), _alpaca),
    "gsm8k": (("question", "answer"), lambda r: (f"Question: {r['question']}\nAnswer: ", str(r["answer"]))),
}


def encode_pair(tokenizer, prompt: str, response: str, max_length: int) -> dict[str, list[int]]:
    """input_ids = prompt + response + eos (the prompt's head cut first); labels = -100 on prompt, ids on response."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    r = r + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    p = p[-(max_length - min(len(r), max_length // 2)) :]  # keep at least half the window for the response
    ids = (p + r)[:max_length]
    labels = ([IGNORE] * len(p) + r)[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


class InstructDataModule(SplitDataModule):
    """Train/val/test loaders of (prompt, response) pairs; `test` is the val split (a held-out file)."""

    def __init__(
        self,
        tokenizer: str,
        data_dir: str = "outputs/data",
        folder: str = "instruct",
        path: str | None = None,
        hub_name: str | None = None,
        hub_config: str | None = None,
        format: str = "auto",
        max_length: int = 256,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_limit: int | None = None,
        val_limit: int | None = None,
        exact_match_examples: int = 8,
        max_new_tokens: int = 64,
        reference_path: str | None = None,
        reference_examples: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed, reference_examples)
        if format != "auto" and format not in FORMATS:
            raise bad_value("data.format", format, f"auto or one of {sorted(FORMATS)}")
        if path is not None and not Path(path).expanduser().exists():
            raise bad_value("data.path", path, f"a local file ending in {SUFFIXES} or a folder with train + val files")
        if max_length < 8:
            raise bad_value("data.max_length", max_length, "an integer >= 8")
        self.tokenizer_name, self.data_dir, self.folder, self.path = tokenizer, Path(data_dir), folder, path
        self.hub_name, self.hub_config, self.format, self.max_length = hub_name, hub_config, format, max_length
        check_limits(train_limit=train_limit, val_limit=val_limit)
        self.train_limit, self.val_limit = train_limit, val_limit
        self.exact_match_examples, self.max_new_tokens = exact_match_examples, max_new_tokens
        self.reference_path = Path(reference_path) if reference_path else self.data_dir / "text" / "tinyshakespeare.txt"
        self.task = TaskSpec(name=folder, num_labels=0, metric="perplexity", metrics=("perplexity",), kind="causal_lm")

    # ----- sources -------------------------------------------------------------------------------------
    def _rows(self) -> tuple[list[dict], list[dict], str]:
        """Raw rows (train, val) and a string naming the source (part of the tokenisation cache key)."""
        where = Path(self.path).expanduser() if self.path else self.data_dir / self.folder
        if where.is_file():
            rows = _read(where, None).to_dict("records")
            cut = max(1, len(rows) // 10)
            return rows[:-cut], rows[-cut:], source_id(where)
        if where.is_dir():
            train = next((where / f"train{s}" for s in SUFFIXES if (where / f"train{s}").exists()), None)
            val = next((where / f"{n}{s}" for n in VAL_STEMS for s in SUFFIXES if (where / f"{n}{s}").exists()), None)
            if train is None or val is None:
                raise bad_value("data.path", str(where), f"a folder with train and val/test files ending in {SUFFIXES}")
            return _read(train, None).to_dict("records"), _read(val, None).to_dict("records"), source_id(train, val)
        return self._hub_rows(where)

    def _hub_rows(self, where: Path) -> tuple[list[dict], list[dict], str]:
        if not self.hub_name:
            raise bad_value("data.data_dir", str(self.data_dir), f"no {where}; run `make data` or pass data.path=")
        try:
            import datasets

            ds = datasets.load_dataset(self.hub_name, self.hub_config)
        except Exception as err:
            raise LabError(
                f"data.hub_name={self.hub_name!r}: no local copy at {where} and `datasets` could not load it "
                f"({type(err).__name__}); run `make data` or pass data.path=<jsonl>"
            ) from None
        val_split = next(s for s in (*VAL_STEMS, "train") if s in ds)
        return [dict(r) for r in ds["train"]], [dict(r) for r in ds[val_split]], f"hub:{self.hub_name}"

    def _pairs(self, rows: list[dict]) -> list[tuple[str, str]]:
        """(prompt, response) per row in `data.format` (auto: the first format whose columns the rows have)."""
        fits = [n for n, (cols, _) in FORMATS.items() if set(cols) <= set(rows[0])]
        name = fits[0] if self.format == "auto" and fits else self.format
        if name not in fits:
            allowed = " or ".join(f"{{{', '.join(cols)}}}" for cols, _ in FORMATS.values())
            raise bad_value("data.format", self.format, f"rows need columns {allowed}; found {sorted(rows[0])}")
        return [FORMATS[name][1](r) for r in rows]

    # ----- setup ---------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train, val, source = self._rows()
        if not train or not val:
            raise LabError(f"data.path={self.path!r}: source {source} has an empty train or val split")
        rng = random.Random(self.seed)
        if self.train_limit is not None and self.train_limit < len(train):
            train = [train[i] for i in sorted(rng.sample(range(len(train)), self.train_limit))]
        if self.val_limit is not None and self.val_limit < len(val):
            val = [val[i] for i in sorted(rng.sample(range(len(val)), self.val_limit))]
        self.tokenizer = load_tokenizer(self.tokenizer_name)
        pairs = {"train": self._pairs(train), "val": self._pairs(val)}
        key = (self.folder, source, self.tokenizer_name, self.format, self.max_length, self.seed)
        for split, items in pairs.items():
            limits = (split, len(items), self.train_limit, self.val_limit)
            self.splits[split] = cached(
                self.data_dir / "cache",
                (*key, *limits),
                lambda items=items: [encode_pair(self.tokenizer, p, r, self.max_length) for p, r in items],
            )
        self.splits["test"] = self.splits["val"]
        self.collate = PadCollator(self.tokenizer.pad_token_id)
        self.task = self.task.replace(probe=self._probe(pairs["val"]))

    def _probe(self, pairs: list[tuple[str, str]]) -> GenerationProbe | None:
        """Exact match on the first `exact_match_examples` val pairs that carry a `#### <answer>`."""
        scored = [(p, final_answer(r)) for p, r in pairs if final_answer(r) is not None][: self.exact_match_examples]
        if not scored:
            return None
        tok = self.tokenizer
        prompts = tuple(tuple(tok(p, add_special_tokens=False)["input_ids"][-self.max_length :]) for p, _ in scored)
        return GenerationProbe(
            prompts=prompts,
            answers=tuple(a for _, a in scored),
            decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            max_new_tokens=self.max_new_tokens,
        )

    def reference_dataloader(self):
        """Held-out general text (default: the end of tiny-shakespeare) for reference perplexity and drift."""
        texts = reference_texts(self.reference_path, self.reference_examples)
        return reference_loader(self.tokenizer, texts, self.max_length, self.eval_batch_size, causal=True)
