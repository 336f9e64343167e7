"""What every benchmark shares: the device, random token batches, the clocks, and running one file on its own."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def random_batches(vocab: int, n: int, batch: int, length: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """`n` binary-classification batches of random token ids on DEVICE: input_ids (batch, length), labels (batch,)."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(1000, vocab, (batch, length), generator=g).to(DEVICE),
            "attention_mask": torch.ones(batch, length, dtype=torch.long, device=DEVICE),
            "labels": torch.randint(0, 2, (batch,), generator=g).to(DEVICE),
        }
        for _ in range(n)
    ]


def wall_now() -> float:
    """Wall seconds, after the GPU has finished what was queued."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def step_clock() -> float:
    """CPU seconds of this process on a CPU (robust to other load on the machine), wall seconds on a GPU."""
    return wall_now() if DEVICE.type == "cuda" else time.process_time()


def device_name() -> str:
    return torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu"


def run_alone(name: str, main: Callable[[Path], dict]) -> None:
    """`python -m benchmarks.<name> [OUT]`: run one benchmark and write OUT/<name>.json (default outputs/bench)."""
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/bench")
    out.mkdir(parents=True, exist_ok=True)
    result = main(out)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def on_one_cpu_thread(measure: Callable[[], dict]) -> dict:
    """Run `measure` with torch on one thread when on a CPU (steadier timings on a shared machine), then restore."""
    threads = torch.get_num_threads()
    if DEVICE.type == "cpu":
        torch.set_num_threads(1)
    try:
        return measure()
    finally:
        torch.set_num_threads(threads)
