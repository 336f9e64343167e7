"""Entry point: `python eval.py run_dir=<job dir> [split=val]` scores a finished job's saved adapter again
(conf/eval.yaml) and logs it as an MLflow run under the job's run; see lowrank_lab.evaluate."""

import os

import hydra
from omegaconf import DictConfig

import lowrank_lab  # noqa: F401  (registers conf/'s resolvers, ${lab.stamp:…}, before Hydra composes)

os.environ.setdefault("LOWRANK_LAB_ROOT", os.path.dirname(os.path.abspath(__file__)))


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    from lowrank_lab.evaluate import main as evaluate

    return evaluate(cfg)


if __name__ == "__main__":
    main()
