"""A reproduction's committed results page (docs/results/<experiment>.md): how it was made (command, git commit,
machine, wall time), the table with baselines, the paired test, the verdict, plots saved beside it, and how the setup
differs from the paper's (DIFFERENCES). report.py's `--page` writes it; `make reproduce-<name>` regenerates it."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from lowrank_lab.tracking.metadata import COMMIT_TAG, DIRTY_TAG
from lowrank_lab.tracking.results import Sweep, sweep_wall_seconds, wall_seconds

PAGES_DIR = "docs/results"  # where the pages live, relative to the checkout
_COMMON = (
    "Here: CPU only (the machine above), small models that install or build offline instead of the paper's, "
    "reduced training rows and epochs, and a few seeds; the numbers test whether the paper's direction holds at "
    "this scale, not its absolute values."
)
# experiment -> how its setup differs from the paper's (facts; the experiment file has the exact settings)
DIFFERENCES = {
    "sad_synthetic": (
        "The paper checks Theorems 1–3 on synthetic spectra (sharp / gradual / flat) and covariances; here the same "
        "linear teacher–student setting at the seed's scale, one process on CPU, one data seed per setting. The "
        "paper's GPU runs and exact dimensions are not reproduced; its claims are about orderings, which are checked."
    ),
    "sad_glue": (
        "The paper distils a fine-tuned RoBERTa-large teacher into RoBERTa-large LoRA students (r = 8) on the full "
        "GLUE training sets (six tasks), on GPUs. Here SST-2 only (a six-task, three-seed sweep needs ~3.6 h on this "
        "machine), the packaged all-MiniLM model, 2,000 training rows, 3 epochs, and one teacher (seed 0) fully "
        "fine-tuned from the student's base on the same rows. We add an arm the paper does not have — KD-LoRA "
        "from SAD's spectral init — to separate the alignment loss from the init. The reported split (test/) is "
        "GLUE's dev set, as in the paper. " + _COMMON
    ),
    "adapter_compare": (
        "The adapter papers (KaSA, DoRA, PiSSA, OLoRA) report RoBERTa / LLaMA results on full GLUE or instruction "
        "data on GPUs, each against LoRA. Here each of KaSA, DoRA, PiSSA's and OLoRA's init against LoRA from "
        "peft's init, fine-tuning MiniLM on SST-2 only (5,400 rows, one epoch, r = 8, one lr for every arm: "
        "the papers tune theirs). " + _COMMON
    ),
    "slora_ablation": (
        "SLoRA's ablation gates instruction tuning of billion-parameter models (e.g. Gemma / LLaMA with QLoRA) on "
        "4–8 GPUs (L40 / A100) over ~10⁴ steps. Here the same four gate modes on SST-2 with MiniLM, a few hundred "
        "steps, burn-in scaled to 10 % of the run. " + _COMMON
    ),
    "slad": (
        "SLAD adapts a larger and a smaller version of a vision foundation model (classification and segmentation "
        "datasets) on GPUs. Here text: all-MiniLM-L6 teaches a student made of its layers 0, 2, 4 on SST-2, with "
        "the same arms (and FT of both, the speed baseline). " + _COMMON
    ),
    "slad_vision": (
        "SLAD adapts pretrained ViT-family teacher/student pairs on real classification and segmentation datasets "
        "on GPUs. Here a tiny ViT pair (32 px digits, 32 wide, 4 / 2 layers), each pre-trained here on a "
        "self-supervised source task (which rotation / mirror of a digit image), 3 epochs per model and arm, one lr "
        "(3e-3) for every LoRA arm, on CPU: at ~10 s per job, fixed costs weigh on the speed check. " + _COMMON
    ),
    "lorafa_math": (
        "LoRA-FA trains LLaMA-family models on MetaMath / GSM8K (1024 tokens, bf16, several GPUs) and evaluates "
        "GSM8K exact match. Here SmolLM2-135M on 160 GSM8K rows of 96 tokens (20 steps: the cycle is 4 task + 1 "
        "realignment steps instead of 20 + 5), one epoch, CPU, against a teacher fully fine-tuned on the same rows; "
        "response-token perplexity on 48 rows of GSM8K's test file (no model selection: one epoch, one validation), "
        "exact match off (greedy generation of worked answers would cost more CPU time than the training). " + _COMMON
    ),
}


def git_state(root: Path | None = None) -> str:
    """`<commit> (clean)` / `<commit> (dirty: uncommitted changes)`, or `unknown (no git)`; the pages being
    regenerated (PAGES_DIR) do not count as changes."""
    cwd = str(root or Path.cwd())
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){PAGES_DIR}"],
            cwd=cwd,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    state = "dirty: uncommitted changes" if dirty.stdout.strip() else "clean"
    return f"{head.stdout.strip()} ({state})"


def commit_line(sweep: Sweep) -> str:
    """The commit the jobs ran at (their `mlflow.source.git.commit` tags, dirty when any job's tree was), and the
    checkout writing the page when that differs; the checkout alone when no job carries the tag."""
    here = git_state()
    tagged = {(r.data.tags.get(COMMIT_TAG), r.data.tags.get(DIRTY_TAG) == "true") for r in sweep.finished}
    commits = sorted({c for c, _ in tagged if c})
    if not commits:
        return f"{here} (the checkout that wrote this page; the jobs carry no commit tag)"
    dirty = {c for c, d in tagged if d}
    jobs = ", ".join(f"{c} ({'dirty: uncommitted changes' if c in dirty else 'clean'})" for c in commits)
    same = commits == [here.split()[0]] and not dirty and here.endswith("(clean)")
    return f"{jobs}, the jobs'" + ("" if same else f"; this page written at {here}")


def machine(sweep: Sweep) -> str:
    """Cores, torch's threads here, and the `threads` / `trainer.accelerator` the jobs ran with."""
    import torch

    jobs = {r.data.params.get("threads", "?") for r in sweep.finished} or {"?"}
    accel = {r.data.params.get("trainer.accelerator", "?") for r in sweep.finished} or {"?"}
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads in the report process); jobs: `threads` = {', '.join(sorted(jobs))}, "
        f"accelerator = {', '.join(sorted(accel))}"
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (a run has not ended)"
    return f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def render(
    sweep: Sweep, command: str, table_md: str, comparison_md: str, verdict: str, statement: str, plots: list[Path]
) -> str:
    """The page's markdown; `plots` are file names beside the page."""
    failed = len(sweep.children) - len(sweep.finished)
    job_s = [s for s in (wall_seconds(r) for r in sweep.finished) if s is not None]
    parents = ", ".join(f"`{p.info.run_id}`" for p in sweep.parents)
    overrides = "; ".join(p.data.tags.get("sweep.overrides", "") for p in sweep.parents)
    name = sweep.experiment_file
    lines = [
        f"# Results: {name}",
        "",
        f"_Regenerated by `{command}` — do not edit by hand._",
        "",
        "## Claim",
        "",
        statement or "_This experiment has no paper claim to check; the table compares its arms._",
        "",
        "## How this was made",
        "",
        f"- command: `{command}`",
        f"- sweep overrides: `{overrides}`" if overrides else "- sweep overrides: none",
        f"- git commit: {commit_line(sweep)}",
        f"- machine: {machine(sweep)}",
        f"- wall time of the sweep: {_duration(sweep_wall_seconds(sweep))}; jobs: {len(sweep.finished)} finished"
        + (f", {failed} not finished (failed or running: never averaged)" if failed else "")
        + (f", {sum(job_s) / len(job_s):.0f} s each on average" if job_s else ""),
        f"- MLflow: experiment `{sweep.experiment}`, sweep run(s) {parents}",
        "",
        "## Results",
        "",
        "Mean ± sample sd (ddof = 1) over seeds of each job's final reported metric (test/ when the job ran its test "
        "split, else val/); n = seeds; the last row is the trivial predictor on the same split (majority class, "
        "constant mean, unigram LM); `learned` counts the runs that beat it (tag lowrank_lab.learned).",
        "",
        table_md,
        "",
        "## Paired test",
        "",
        "Arms paired by seed: Δ per seed, mean ± sd, paired t-test p (scipy.stats.ttest_1samp on Δ), Wilcoxon "
        "signed-rank p (from 6 seeds), percentile-bootstrap 95 % CI of the mean Δ (10 000 resamples, seed 0).",
        "",
        comparison_md or "_no two arms to pair_",
        "",
        "## Verdict",
        "",
        f"**{verdict}**" if verdict else "_no verdict: nothing to compare_",
        "",
        "## Plots",
        "",
        *[f"![]({p.name})" for p in plots],
        "",
        "## Differences from the paper",
        "",
        DIFFERENCES.get(name, "_not written for this experiment (lowrank_lab/tracking/pages.py: DIFFERENCES)_"),
    ]
    return "\n".join(lines) + "\n"
