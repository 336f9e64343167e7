"""SVD utilities: data-weighted teacher subspace, principal angles, rank selection, Gram streaming."""

from lowrank_lab.spectral.angles import (
    mean_principal_angle,
    orthonormal_basis,
    principal_angles,
    subspace_overlap,
)
from lowrank_lab.spectral.gram import GramAccumulator
from lowrank_lab.spectral.rank import (
    effective_rank,
    energy_rank,
    gavish_donoho_rank,
    gavish_donoho_threshold,
)
from lowrank_lab.spectral.subspace import (
    best_rank_r,
    data_weighted_subspace,
    data_weighted_subspace_from_gram,
    eckart_young_bound,
    gram_factor,
    randomized_left_svd,
    weighted_error,
)

__all__ = [
    "GramAccumulator",
    "best_rank_r",
    "data_weighted_subspace",
    "data_weighted_subspace_from_gram",
    "eckart_young_bound",
    "effective_rank",
    "energy_rank",
    "gavish_donoho_rank",
    "gavish_donoho_threshold",
    "gram_factor",
    "mean_principal_angle",
    "orthonormal_basis",
    "principal_angles",
    "randomized_left_svd",
    "subspace_overlap",
    "weighted_error",
]
