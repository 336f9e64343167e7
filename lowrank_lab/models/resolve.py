"""Where weights live, for names that need nothing built: a file or folder inside an installed package
(`pkg:<package>/<subdir>`), a local directory, or a hub id in the local cache. The bottom of models/: it imports
nothing else from the package (`convert:` and `pretrain:` names are built first, see models.backbone)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lowrank_lab.errors import LabError, bad_value


def models_dir() -> Path:
    """`$LOWRANK_LAB_MODELS`, else `<repo>/outputs/models` (shared by every run and sweep job)."""
    if os.environ.get("LOWRANK_LAB_MODELS"):
        return Path(os.environ["LOWRANK_LAB_MODELS"])
    root = os.environ.get("LOWRANK_LAB_ROOT") or Path(__file__).resolve().parents[2]
    return Path(root) / "outputs" / "models"


def package_file(package: str, relative: str, key: str = "model.name_or_path") -> Path:
    """A file or folder shipped inside an installed package, located with importlib (never imported)."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        hint = f"package {package!r} is not installed; `pip install --no-deps {package.replace('_', '-')}`"
        raise bad_value(key, f"pkg:{package}/{relative}", hint)
    path = Path(list(found.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise bad_value(key, f"pkg:{package}/{relative}", f"{path} does not exist inside the package")
    return path


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def hub_snapshot(name: str, key: str = "model.name_or_path") -> str:
    """The local snapshot of hub id `name`: the cache first; when offline (or the download fails) one line."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:
        if _offline():
            raise LabError(
                f"{key}={name!r}: not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
                f"run `huggingface-cli download {name}` on a machine with a network, "
                "or use model=minilm / model=tiny-bert"
            ) from None
    try:
        return snapshot_download(name, etag_timeout=2)
    except Exception as err:
        raise LabError(
            f"{key}={name!r}: could not download ({type(err).__name__}); "
            "check the id and the network, or set HF_HUB_OFFLINE=1 and use a packaged model"
        ) from None


def locate(name_or_path: str, key: str = "model.name_or_path") -> str:
    """`pkg:<package>/<subdir>`, a local directory or a cached hub id -> a local directory; fail fast otherwise."""
    if name_or_path.startswith("pkg:"):
        package, _, sub = name_or_path[len("pkg:") :].partition("/")
        return str(package_file(package, sub, key))
    if os.path.isdir(os.path.expanduser(name_or_path)):
        return os.path.expanduser(name_or_path)
    if name_or_path.startswith((".", "/", "~")):
        raise bad_value(key, name_or_path, "local model directory does not exist")
    return hub_snapshot(name_or_path, key)
