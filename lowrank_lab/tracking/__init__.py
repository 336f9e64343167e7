"""MLflow: one store, one experiment, a parent run per sweep and a child run per job."""

from lowrank_lab.tracking.store import ensure_experiment, flatten_config

__all__ = ["ensure_experiment", "flatten_config"]
