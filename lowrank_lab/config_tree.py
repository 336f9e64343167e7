"""The composed config printed as a rich tree at the start of a job (lightning-hydra-template's habit): one branch
per top-level group, in the order the defaults list composes them; `extras.print_config=false` turns it off."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

FIRST = ("data", "model", "peft", "init", "method", "optim", "trainer", "callbacks", "logger", "paths")


def config_tree_text(cfg: DictConfig) -> dict[str, str]:
    """`{group: yaml}` with interpolations resolved where they can be (a `${hydra:…}` outside a job stays as
    written) and credentials in URIs masked; `hydra` itself is left out."""
    from lowrank_lab.tracking.store import mask_credentials

    keys = [k for k in FIRST if k in cfg] + [k for k in cfg if k not in FIRST and k != "hydra"]
    out = {}
    for key in keys:
        node = cfg[key] if OmegaConf.is_config(cfg[key]) else OmegaConf.create({key: cfg[key]})
        try:
            text = OmegaConf.to_yaml(node, resolve=True)
        except Exception:  # an interpolation that needs a running Hydra job
            text = OmegaConf.to_yaml(node)
        out[str(key)] = mask_credentials(text)
    return out


def print_config_tree(cfg: DictConfig) -> None:
    """Print the tree (stdout) unless `extras.print_config` is false."""
    if not OmegaConf.select(cfg, "extras.print_config", default=True):
        return
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("CONFIG", style="dim", guide_style="dim")
    for key, text in config_tree_text(cfg).items():
        tree.add(key, style="bold").add(Syntax(text.rstrip(), "yaml", theme="ansi_dark", background_color="default"))
    Console().print(tree)
