"""Sparse gradient parts and low-precision moments: pure functions, plain PyTorch (the Adam update of a sparse
part is :func:`app.optim.kernels.sparse_adamw`).

Conventions:

* a sparse part of a tensor ``x`` is ``(index, values)``: ``index`` a sorted 1-D integer tensor of positions in
  ``x.reshape(-1)`` (int32 when ``x.numel()`` fits, else int64; see :func:`index_dtype`) and ``values`` the
  entries at those positions (``x``'s dtype, complex included). Sorted indices make gathers and scatters walk
  memory in order and make a selection comparable across refreshes (:func:`carry_over`).
* magnitudes are ``|x|^2`` (:func:`tucker.abs_sq`), so "largest" means largest modulus for complex entries.
* random choices take an explicit seed (:func:`mix_seed`) and a private ``torch.Generator``; the global RNG is
  never touched, so every process that passes the same seed gets the same answer.
* a bfloat16 moment stores real numbers as they are and complex numbers as their real and imaginary parts, a
  trailing dimension of 2 (``torch.view_as_real``); :func:`to_bfloat16` rounds to nearest-even or
  stochastically (unbiased in expectation), :func:`from_bfloat16` restores the float32/complex64 value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from . import tucker
from .tucker import abs_sq

__all__ = [
    "index_dtype",
    "sparse_count",
    "mix_seed",
    "topk_indices",
    "randk_indices",
    "gather",
    "gather_project_back",
    "scatter",
    "carry_over",
    "to_bfloat16",
    "from_bfloat16",
]

_INT32_MAX = torch.iinfo(torch.int32).max
_MASK64 = (1 << 64) - 1


def index_dtype(numel: int) -> torch.dtype:
    """int32 if every position of a tensor with ``numel`` elements fits in it, else int64."""
    return torch.int32 if numel - 1 <= _INT32_MAX else torch.int64


def sparse_count(ratio: float, numel: int) -> int:
    """Entries a sparse part keeps: ``0`` for ``ratio == 0``, else ``clamp(floor(ratio * numel + 0.5), 1, numel)``."""
    if ratio <= 0:
        return 0
    return min(numel, max(1, int(math.floor(ratio * numel + 0.5))))


def mix_seed(*values: int) -> int:
    """A 63-bit seed from a few integers (splitmix64 finaliser over each in turn); the same on every machine."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h >> 1


def topk_indices(x: Tensor, k: int) -> Tensor:
    """Sorted positions (in ``x.reshape(-1)``) of the ``k`` entries of largest magnitude ``|x|``.

    Ties at the threshold are broken by ``torch.topk`` (deterministic for a given device and input).
    """
    flat = x.reshape(-1)
    idx = torch.topk(abs_sq(flat), k, sorted=False).indices
    return idx.sort().values.to(index_dtype(flat.numel()))


def randk_indices(numel: int, k: int, seed: int, device: torch.device | str | None = None) -> Tensor:
    """``k`` distinct positions of ``range(numel)`` drawn uniformly, sorted; a function of ``(numel, k, seed)``.

    Drawn on the CPU with a private generator (so the result does not depend on the device or on any global
    RNG state), then moved to ``device``.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.randperm(numel, generator=gen)[:k].sort().values
    return idx.to(dtype=index_dtype(numel), device=device)


def gather(x: Tensor, index: Tensor) -> Tensor:
    """The entries of ``x.reshape(-1)`` at ``index`` (a new tensor)."""
    return x.reshape(-1).index_select(0, index)


def scatter(values: Tensor, index: Tensor, shape: Sequence[int]) -> Tensor:
    """A zero tensor of ``shape`` with ``values`` at ``index`` (the dense form of a sparse part)."""
    out = values.new_zeros(math.prod(shape))
    out.index_put_((index,), values)
    return out.reshape(tuple(shape))


def gather_project_back(core: Tensor, factors: Sequence[Tensor | None], index: Tensor) -> Tensor:
    """``gather(project_back(core, factors), index)`` without the full back-projection.

    Runs every mode product but the last (most expensive) one of :func:`tucker.project_back`'s order, then one
    length-``r`` dot product per kept position along the remaining mode: ``k * r`` multiply-adds instead of
    ``numel * r``.
    """
    outs = tuple(None if u is None else int(u.shape[0]) for u in factors)
    order = tucker.product_order(tuple(core.shape), outs)
    if not order:
        return gather(core, index)
    m = order[-1]
    mats = list(factors)
    u, mats[m] = mats[m], None
    t = tucker.multi_mode_dot(core, mats)  # the full shape, but r_m along mode m
    n_m, r_m = u.shape
    after = math.prod(t.shape[m + 1 :])
    i = index.to(torch.int64)
    i_m = torch.div(i, after, rounding_mode="floor").remainder_(n_m)
    rest = torch.div(i, after * n_m, rounding_mode="floor").mul_(after).add_(i.remainder(after))
    rows = t.movedim(m, -1).reshape(-1, r_m).index_select(0, rest)  # (k, r_m)
    return (rows * u.index_select(0, i_m)).sum(-1)


def carry_over(values: Tensor, old_index: Tensor, new_index: Tensor) -> Tensor:
    """``values`` (one row per entry of ``old_index``) moved to ``new_index``: rows of positions in both sets
    keep their value, new positions get zeros. Both indices sorted; extra trailing dims of ``values`` allowed."""
    out = values.new_zeros((new_index.numel(), *values.shape[1:]))
    if old_index.numel() == 0 or new_index.numel() == 0:
        return out
    old = old_index.to(torch.int64)
    new = new_index.to(torch.int64)
    pos = torch.searchsorted(old, new).clamp_max_(old.numel() - 1)
    hit = old[pos] == new
    out[hit] = values[pos[hit]]
    return out


def to_bfloat16(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``x`` (float32/complex64 or wider) as bfloat16; complex ``x`` gains a trailing dim of 2 (real, imaginary).

    Without ``generator``: round to nearest-even. With it: stochastic rounding, i.e. up or down to the
    neighbouring bfloat16 values with probabilities given by the distance (an unbiased estimate of ``x``), using
    16 random bits per number from ``generator`` (which must be on ``x``'s device). Stochastic rounding keeps
    slow exponential averages moving: with ``beta2 = 0.999`` a step changes a second moment by ~0.1%, below
    bfloat16's half-ulp (0.2-0.4%), so round-to-nearest would freeze it whenever the gradient is small.
    """
    r = torch.view_as_real(x) if x.is_complex() else x
    r = r.to(torch.float32).contiguous()
    if generator is None:
        return r.to(torch.bfloat16)
    noise = torch.randint(0, 1 << 16, r.shape, generator=generator, device=r.device, dtype=torch.int32)
    # bits + noise, written into the noise (no second full-size int32 tensor); keep the high 16 bits: a bfloat16
    bits = noise.add_(r.view(torch.int32)).bitwise_and_(-65536)
    return bits.view(torch.float32).to(torch.bfloat16)


def from_bfloat16(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A bfloat16 moment back in ``dtype`` (a complex ``dtype`` reads the trailing (real, imaginary) pair)."""
    if dtype.is_complex:
        return torch.view_as_complex(x.to(torch.float32)).to(dtype)
    return x.to(dtype)
