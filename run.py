"""Entry point: `python run.py [-m] key=value …` composes conf/ and hands the config to lowrank_lab.train.run."""

import os

import hydra
from omegaconf import DictConfig

os.environ.setdefault("LOWRANK_LAB_ROOT", os.path.dirname(os.path.abspath(__file__)))


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from lowrank_lab.train import run

    return run(cfg)


if __name__ == "__main__":
    main()
