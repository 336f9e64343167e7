"""Entry point: `python run.py [-m] key=value …` composes conf/ and hands the config to lowrank_lab.train.run."""

import os
import sys

import hydra
from omegaconf import DictConfig

os.environ.setdefault("LOWRANK_LAB_ROOT", os.path.dirname(os.path.abspath(__file__)))
# Hydra loads launcher classes only from the `hydra_plugins` namespace: ours (hydra/launcher=slurm) lives here.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "launchers", "plugins"))


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from lowrank_lab.train import run

    return run(cfg)


if __name__ == "__main__":
    main()
