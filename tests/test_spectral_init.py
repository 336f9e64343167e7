"""init=spectral: the adapter starts at the data-weighted Eckart–Young optimum of the teacher update, computed on
the calibration tokens (both the implicit-SVD and the Gram route), for any LoRA scaling."""

from __future__ import annotations

import pytest
import torch

from lowrank_lab.adapters.init.spectral import SPECTRAL_NEEDS, SpectralInit
from lowrank_lab.adapters.wrap import adapted_modules
from lowrank_lab.errors import LabError
from lowrank_lab.spectral import best_rank_r, data_weighted_subspace, eckart_young_bound, weighted_error
from lowrank_lab.spectral.calibrate import collect_inputs
from lowrank_lab.teachers.load import weight_delta
from lowrank_lab.teachers.module import Teacher
from tests.test_kd import TARGETS, fake_datamodule, lora, perturbed, tiny_bert


def setup(r: int, alpha: float):
    base = tiny_bert()
    teacher_model = perturbed(base)
    names = [n for n, _ in base.named_modules() if n.endswith(tuple(TARGETS))]
    teacher = Teacher(teacher_model, delta=weight_delta(teacher_model, base, names))
    student = lora(base, r=r, alpha=alpha)
    return student, teacher


def calibration_rows(teacher: Teacher, datamodule, n_calib: int) -> dict[str, torch.Tensor]:
    modules = {n: teacher.model.get_submodule(n) for n in teacher.delta}
    stats = collect_inputs(
        modules,
        lambda b: teacher.model(**{k: v for k, v in b.items() if k != "labels"}),
        datamodule.train_dataloader(),
        n_calib,
        keep_rows=True,
    )
    return {n: s.sample.double() for n, s in stats.items()}


@pytest.mark.parametrize(
    "r,alpha,n_calib", [(4, 4, 100), (4, 8, 100), (8, 4, 300)], ids=["scaling1", "scaling2", "gram-route"]
)
def test_adapter_equals_best_rank_r_on_calibration_data(r: int, alpha: float, n_calib: int) -> None:
    student, teacher = setup(r, alpha)
    datamodule = fake_datamodule(num_batches=8)
    SpectralInit(n_calib=n_calib).apply(student, datamodule=datamodule, teacher=teacher)
    rows = calibration_rows(teacher, datamodule, n_calib)
    for name, layer in adapted_modules(student).items():
        tname = name.removeprefix("base_model.model.")
        x, dw = rows[tname], teacher.delta[tname].double()
        assert x.shape[0] == n_calib
        B, A = best_rank_r(dw, x, r)
        s = layer.scaling["default"]
        assert s == alpha / r
        adapter = s * layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double()
        torch.testing.assert_close(adapter, B @ A, rtol=1e-4, atol=1e-6)
        _, S_all = data_weighted_subspace(dw, x, min(dw.shape[0], dw.shape[1], x.shape[0]))
        bound = eckart_young_bound(S_all, r)
        assert float(weighted_error(dw, adapter, x)) == pytest.approx(float(bound), rel=1e-4, abs=1e-10)
        Bw = layer.lora_B["default"].weight
        torch.testing.assert_close(Bw.T @ Bw, torch.eye(r), atol=1e-5, rtol=0)  # B = U_r, orthonormal


def test_spectral_init_moves_the_output_off_the_base() -> None:
    student, teacher = setup(4, 4)
    datamodule = fake_datamodule()
    b = next(datamodule.train_dataloader())
    inputs = {k: v for k, v in b.items() if k != "labels"}
    student.eval()
    before = student(**inputs).logits
    SpectralInit(n_calib=128).apply(student, datamodule=datamodule, teacher=teacher)
    assert not torch.allclose(student(**inputs).logits, before)


def test_needs_a_sad_teacher() -> None:
    student, _ = setup(4, 4)
    with pytest.raises(LabError, match="init=spectral needs a teacher"):
        SpectralInit().apply(student, datamodule=fake_datamodule(), teacher=None)
    with pytest.raises(LabError, match="init=spectral needs a teacher"):
        SpectralInit().apply(student, datamodule=fake_datamodule(), teacher=Teacher(tiny_bert(hidden=48)))
    with pytest.raises(LabError, match="init.n_calib"):
        SpectralInit(n_calib=0)
    assert "SAD teacher" in SPECTRAL_NEEDS
