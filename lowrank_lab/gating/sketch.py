"""CountSketch and TensorSketch: random linear maps that preserve inner products in expectation.

CountSketch (Charikar et al.):  CS(x)_j = Σ_{i : h(i) = j} s(i) · x_i,   h: [dim] → [m],  s: [dim] → ±1,
so that E⟨CS(x), CS(y)⟩ = ⟨x, y⟩.

TensorSketch (Pham & Pagh), SLoRA step 3:  TS(a ⊗ b) = IFFT(FFT(CS_a(a)) ⊙ FFT(CS_b(b))),
a circular convolution of two independent CountSketches, so that
E⟨TS(a ⊗ b), TS(a' ⊗ b')⟩ = ⟨a, a'⟩ · ⟨b, b'⟩ without ever forming the dim_a × dim_b outer product.
"""

from __future__ import annotations

import torch

__all__ = ["CountSketch", "TensorSketch"]


class CountSketch:
    """Hash-and-sign projection R^dim → R^m drawn from a torch.Generator seeded by `seed`."""

    def __init__(self, dim: int, m: int, seed: int = 0) -> None:
        if dim < 1:
            raise ValueError(f"CountSketch dim must be a positive integer, got {dim}.")
        if m < 1:
            raise ValueError(f"CountSketch m must be a positive integer, got {m}.")
        self.dim, self.m, self.seed = int(dim), int(m), int(seed)
        gen = torch.Generator().manual_seed(self.seed)
        self.hashes = torch.randint(0, self.m, (self.dim,), generator=gen)  # h: (dim,) in [0, m)
        self.signs = torch.randint(0, 2, (self.dim,), generator=gen).float() * 2.0 - 1.0  # s: (dim,) ±1

    def to(self, device: torch.device | str) -> CountSketch:
        """Move the hash and sign tables to `device` (in place); returns self."""
        self.hashes = self.hashes.to(device)
        self.signs = self.signs.to(device)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Sketch dense vectors: x (..., dim) -> (..., m)."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"CountSketch expects last dimension {self.dim}, got shape {tuple(x.shape)}.")
        out = x.new_zeros(*x.shape[:-1], self.m)
        return out.index_add_(-1, self.hashes, x * self.signs.to(x.dtype))  # bucket j += s(i) x_i

    def sketch_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Sketch sparse vectors given by (values, indices), both (..., k) -> (..., m); duplicates add up."""
        if values.shape != indices.shape:
            raise ValueError(
                f"sketch_sparse needs values and indices of equal shape, got {tuple(values.shape)} "
                f"and {tuple(indices.shape)}."
            )
        out = values.new_zeros(*values.shape[:-1], self.m)
        signed = values * self.signs.to(values.dtype)[indices]  # (..., k)
        return out.scatter_add_(-1, self.hashes[indices], signed)


class TensorSketch:
    """Sketch of a ⊗ b (dim_a·dim_b entries) into R^m through two independent CountSketches and an FFT."""

    def __init__(self, dim_a: int, dim_b: int, m: int, seed: int = 0) -> None:
        if m < 1 or m & (m - 1) != 0:
            raise ValueError(f"TensorSketch m must be a power of two (for the FFT), got {m}.")
        self.dim_a, self.dim_b, self.m, self.seed = int(dim_a), int(dim_b), int(m), int(seed)
        # Two independent sub-seeds from one generator, so that seeds s and s+1 share no hash table.
        gen = torch.Generator().manual_seed(self.seed)
        seed_a, seed_b = torch.randint(0, 2**62, (2,), generator=gen).tolist()
        self.cs_a = CountSketch(dim_a, m, seed_a)
        self.cs_b = CountSketch(dim_b, m, seed_b)

    def to(self, device: torch.device | str) -> TensorSketch:
        """Move both CountSketches to `device` (in place); returns self."""
        self.cs_a.to(device)
        self.cs_b.to(device)
        return self

    def _convolve(self, sa: torch.Tensor, sb: torch.Tensor, reduce: bool) -> torch.Tensor:
        """Circular convolution of (N, m) sketches -> (N, m), or their row sum (m,) when `reduce`."""
        prod = torch.fft.rfft(sa, n=self.m, dim=-1) * torch.fft.rfft(sb, n=self.m, dim=-1)  # (N, m//2+1)
        if reduce:  # Σ_t IFFT(·_t) = IFFT(Σ_t ·_t): one inverse transform for the whole batch
            prod = prod.sum(dim=0)
        return torch.fft.irfft(prod, n=self.m, dim=-1)

    def __call__(self, a: torch.Tensor, b: torch.Tensor, reduce: bool = False) -> torch.Tensor:
        """Sketch rows a_n ⊗ b_n: a (N, dim_a), b (N, dim_b) -> (N, m), or (m,) summed over n if `reduce`."""
        self._check_rows(a, b.shape[0])
        return self._convolve(self.cs_a(a), self.cs_b(b), reduce)

    def sketch_sparse(
        self, a: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, reduce: bool = False
    ) -> torch.Tensor:
        """As __call__ with b sparse: a (N, dim_a), b given by values/indices (N, k) -> (N, m) or (m,)."""
        self._check_rows(a, values.shape[0])
        return self._convolve(self.cs_a(a), self.cs_b.sketch_sparse(values, indices), reduce)

    def _check_rows(self, a: torch.Tensor, n_b: int) -> None:
        """Raise when a is not (N, dim_a) with the same N as b."""
        if a.dim() != 2 or a.shape[0] != n_b:
            raise ValueError(
                f"TensorSketch expects a of shape (N, {self.dim_a}) with N matching b ({n_b}), got {tuple(a.shape)}."
            )
