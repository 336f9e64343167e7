"""SAD-LoRA's synthetic theorem checks: a linear teacher–student problem with controlled spectra.

Setting: teacher y = (W0 + ΔW) x, student y = (W0 + B A) x with B (d_out, r), A (r, d_in), inputs with covariance
Σ = E[x xᵀ]. The student's distillation error is the data-weighted error

    E‖(ΔW − BA)x‖² = ‖(ΔW − BA) Σ^{1/2}‖²_F,   W̃ = ΔW Σ^{1/2} = Σᵢ σᵢ uᵢ ṽᵢᵀ,   U_r = [u_1 … u_r]

The seed names Theorems 1–3 without printing them; as checked here (our statement):

- Theorem 1 (data-weighted Eckart–Young). Every rank-r update has error ≥ Σ_{i>r} σᵢ²(W̃), and
  B = U_r, A = U_rᵀ ΔW (SAD's spectral init) attains it: the error is (I − U_r U_rᵀ) W̃ in Frobenius norm.
- Theorem 2 (misalignment is what low-rank distillation loses). For any B, with P_B the projector onto
  colspan(B), the error splits into Σ_{i>r} σᵢ² + misalignment + coefficient, where
  misalignment = ‖(I − P_B) W̃‖²_F − Σ_{i>r} σᵢ² depends on colspan(B) alone and is sandwiched by the
  Grassmann loss L_align = Σ sin²θᵢ(colspan B, U_r):  (σ_r² − σ_{r+1}²) L_align ≤ misalignment ≤ σ_1² L_align.
  Driving L_align to 0 removes it; what is left (coefficient = ‖(P_B ΔW − BA)Σ^{1/2}‖²_F) is a convex least
  squares in A. KD from LoRA's B = 0 finds U_r only as fast as the gap σ_r² − σ_{r+1}² lets it, so under a
  short budget its excess error is mostly misalignment; SAD-Align's alignment term removes it directly.
- Theorem 3 (the weight SVD is the wrong target when the data is anisotropic). Truncating the SVD of ΔW has no
  coefficient error, only misalignment: it attains the bound when Σ ∝ I or when Σ's eigenvectors are ΔW's right
  singular vectors in the same order (then W̃ has ΔW's left singular vectors and order), and falls short by its
  misalignment when Σ reweights ΔW's directions enough to reorder them.

`python -m lowrank_lab.synthetic --out DIR [--tracking-uri URI]` runs the sweep (see study.py);
`data=synthetic` serves the same setting as batches (datamodule.py, imported on demand: it pulls in Lightning).
"""

from lowrank_lab.synthetic.methods import METHODS, TrainConfig, error_split, sad_init, solve, train_lora, weight_svd
from lowrank_lab.synthetic.setting import COVARIANCES, SPECTRA, SyntheticSetting, make_setting
from lowrank_lab.synthetic.study import StudyConfig, log_to_mlflow, main, run_study

__all__ = [
    "COVARIANCES",
    "METHODS",
    "SPECTRA",
    "StudyConfig",
    "SyntheticSetting",
    "TrainConfig",
    "error_split",
    "log_to_mlflow",
    "main",
    "make_setting",
    "run_study",
    "sad_init",
    "solve",
    "train_lora",
    "weight_svd",
]
