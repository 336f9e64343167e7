"""Hydra instantiates launchers only from the `hydra_plugins` namespace: this names lowrank_lab's SLURM
launcher for it (`hydra/launcher=slurm`, conf/hydra/launcher/slurm.yaml).

Found because run.py puts launchers/plugins on sys.path."""

from lowrank_lab.tracking.slurm import SlurmLauncher as _SlurmLauncher


class SlurmLauncher(_SlurmLauncher):
    """See lowrank_lab.tracking.slurm.SlurmLauncher."""
