"""Entry point: `python run.py [-m] key=value …` composes conf/ and hands the config to lowrank_lab.train.run."""

import os
import sys

import hydra
from omegaconf import DictConfig

import lowrank_lab  # noqa: F401  (registers conf/'s resolvers, ${lab.stamp:…}, before Hydra composes)

os.environ.setdefault("LOWRANK_LAB_ROOT", os.path.dirname(os.path.abspath(__file__)))
# Hydra loads launcher classes only from the `hydra_plugins` namespace: ours (hydra/launcher=slurm) lives here.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "launchers", "plugins"))


def seed_style(argv: list[str]) -> list[str]:
    """`+group=x` / `++group=x` (the LoRA-GA / LoRA-FA seeds' command lines) for a group conf/config.yaml already
    defaults means `group=x`: Hydra refuses a second choice for a group ("Multiple values for init")."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf", "config.yaml")).defaults
    groups = {key for entry in defaults if not isinstance(entry, str) for key in entry if " " not in key}
    return [a.lstrip("+") if a.startswith("+") and a.lstrip("+").split("=")[0] in groups else a for a in argv]


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from lowrank_lab.train import run

    return run(cfg)


if __name__ == "__main__":
    sys.argv = seed_style(sys.argv)
    main()
