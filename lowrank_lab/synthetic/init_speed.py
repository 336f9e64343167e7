"""The synthetic half of `experiment=init_compare`: does a data-aware gradient init converge faster than peft's
default init? (LoRA-FA seed.) On the linear teacher–student setting, with y_T = (W0 + ΔW)x:

    L(W) = E‖y_T − W x‖²,   G = ∇_W L(W0) = −2 ΔW Σ                          (Σ = xᵀx/n)
    default   B = 0, A ~ U(±1/√d_in)                                         (peft)
    pissa     B A = [W0]_r (balanced √S factors), base W0 − B A               (output unchanged at step 0)
    lora_fa   B A = c²·[−G]_r/σ₁ (lorafa_factors, the init=gradient code), base W0 − B A
    lora_fa_unit  the same with c = 1 (init.scale=unit)

Each init is one entry of `synthetic.inits.INITS`, the platform's own `init=` objects: peft builds default and PiSSA
on a layer holding W0, init=gradient's `lorafa_factors` builds LoRA-FA from the exact G. Every init then trains
(B, A) with the same Adam budget as the SAD study (methods.TrainConfig). The error of the adapter's effective update
D = W_eff − W0 is reported over the Eckart–Young bound, E‖(ΔW − D)x‖² / Σ_{i>r} σᵢ²(W̃), after `early_step` and
after all steps, per seed.

    python -m lowrank_lab.synthetic.init_speed --out outputs/reports/init_compare_synthetic [--tracking-uri URI]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lowrank_lab.losses import kd_loss
from lowrank_lab.spectral import eckart_young_bound, weighted_error
from lowrank_lab.synthetic.inits import INITS, STABLE_GAMMA, initial_factors, loss_gradient
from lowrank_lab.synthetic.methods import TrainConfig
from lowrank_lab.synthetic.setting import SyntheticSetting, make_setting

__all__ = ["INITS", "STABLE_GAMMA", "initial_factors", "loss_gradient", "main", "run", "table", "train_curve"]


def train_curve(setting: SyntheticSetting, init: str, rank: int, cfg: TrainConfig) -> list[float]:
    """Error ratio E‖(ΔW − D)x‖² / bound of the effective update D = base + B A − W0, at step 0 and after each step."""
    B0, A0, base = initial_factors(setting, init, rank, cfg.seed)
    B, A = B0.clone().requires_grad_(), A0.clone().requires_grad_()
    offset = setting.w0 - base  # B₀A₀ where the init moved it out of the base, else 0: D = B A − offset
    bound = float(eckart_young_bound(setting.sigma_tilde, rank))
    opt = torch.optim.Adam([B, A], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr * 1e-3)
    curve = [float(weighted_error(setting.delta_w, B @ A - offset, setting.x)) / bound]
    for _ in range(cfg.steps):
        w_eff = base + B @ A
        loss = kd_loss(setting.x @ w_eff.T, setting.y, regression=True) * setting.w0.shape[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([B, A], cfg.clip)
        opt.step()
        sched.step()
        curve.append(float(weighted_error(setting.delta_w, (B @ A).detach() - offset, setting.x)) / bound)
    return curve


def run(
    seeds: tuple[int, ...] = (0, 1, 2),
    rank: int = 4,
    covariances: tuple[str, ...] = ("isotropic", "misaligned"),
    cfg: TrainConfig | None = None,
) -> dict[tuple[str, str], np.ndarray]:
    """{(covariance, init): error-ratio curves (seeds, steps + 1)} on the gradual spectrum, one setting per seed."""
    cfg = cfg or TrainConfig()
    curves = {}
    for cov in covariances:
        for init in INITS:
            rows = []
            for seed in seeds:
                setting = make_setting("gradual", cov, seed=seed)
                rows.append(train_curve(setting, init, rank, TrainConfig(**{**vars(cfg), "seed": seed})))
            curves[(cov, init)] = np.array(rows)
    return curves


def table(curves: dict[tuple[str, str], np.ndarray], early: int) -> list[dict]:
    """Per (covariance, init): mean ± std over seeds of the ratio after 10 steps, `early` steps and all steps."""
    out = []
    for (cov, init), c in curves.items():
        row = {"covariance": cov, "init": init, "n": len(c)}
        for name, step in (("step10", min(10, c.shape[1] - 1)), (f"step{early}", early), ("final", -1)):
            row[f"{name}_mean"], row[f"{name}_std"] = float(c[:, step].mean()), float(c[:, step].std(ddof=1))
        out.append(row)
    return out


def write(curves: dict, rows: list[dict], early: int, out: Path, tracking_uri: str | None) -> list[Path]:
    """init_speed.csv, init_speed.md, init_speed.png under out; the same as one MLflow run when tracking_uri."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from lowrank_lab.tracking.tables import markdown_table

    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "init_speed.csv", index=False)
    head = ["covariance", "init", "ratio at step 10", f"at step {early}", "final"]
    table = [
        [r["covariance"], r["init"]]
        + [f"{r[f'{k}_mean']:.3f} ± {r[f'{k}_std']:.3f}" for k in ("step10", f"step{early}", "final")]
        for r in rows
    ]
    (out / "init_speed.md").write_text(markdown_table(pd.DataFrame(table, columns=head)) + "\n")
    covs = sorted({c for c, _ in curves})
    fig, axes = plt.subplots(1, len(covs), figsize=(5 * len(covs), 3.5), squeeze=False)
    for ax, cov in zip(axes[0], covs):
        for (c, init), curve in curves.items():
            if c == cov:
                ax.plot(curve.mean(0), label=init)
        ax.set(yscale="log", xlabel="step", ylabel="error / Eckart–Young bound", title=f"gradual spectrum, {cov} Σ")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "init_speed.png", dpi=120)
    plt.close(fig)
    paths = [out / "init_speed.csv", out / "init_speed.md", out / "init_speed.png"]
    if tracking_uri:
        import mlflow

        from lowrank_lab.tracking import ensure_experiment

        mlflow.set_tracking_uri(tracking_uri)
        with mlflow.start_run(experiment_id=ensure_experiment(tracking_uri, "init_compare"), run_name="synthetic"):
            for (cov, init), curve in curves.items():
                for step, value in enumerate(curve.mean(0)):
                    mlflow.log_metric(f"synthetic/{cov}/{init}/ratio", float(value), step=step)
            for path in paths:
                mlflow.log_artifact(str(path))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lowrank_lab.synthetic.init_speed", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("outputs/reports/init_compare_synthetic"))
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--early-step", type=int, default=TrainConfig.early_step)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = TrainConfig(steps=a.steps, early_step=min(a.early_step, a.steps))
    curves = run(tuple(int(s) for s in a.seeds.split(",")), a.rank, cfg=cfg)
    rows = table(curves, cfg.early_step)
    paths = write(curves, rows, cfg.early_step, a.out, a.tracking_uri)
    print((a.out / "init_speed.md").read_text())
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
