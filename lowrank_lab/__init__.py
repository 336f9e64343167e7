"""lowrank_lab: a Hydra-composed experiment platform for low-rank adaptation and distillation."""

from lowrank_lab.resolvers import register as _register_resolvers

__version__ = "0.1.0"

_register_resolvers()  # `${lab.stamp:…}` (job dirs) and `${lab.shquote:…}` (sbatch setup lines) in conf/
