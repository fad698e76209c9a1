"""The matrix GaLore baseline as a layout: which view of a tensor is projected, and on which side.

GaLore (Zhao et al., 2024) projects a matrix ``M`` of shape ``(m, n)`` on its smaller side: with ``m <= n`` the
core is ``U^H M`` (``(r, n)``, ``U`` the top-``r`` left singular vectors), otherwise ``M V`` (``(m, r)``). For a
tensor of shape ``(N1, ..., NN)`` the paper's baseline first rolls up the first ``d`` modes (``rollup=d``):
``M`` has shape ``(N1*...*Nd, Nd+1*...*NN)``. In ``app.optim`` this is a Tucker projection of the 2-mode view with
a factor on one mode only (``factors = [U, None]`` or ``[None, conj(V)]``), so the same ``project`` /
``project_back`` / solver code serves both paths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .tucker import RankSpec, _is_int, check_rank_spec, scalar_rank

__all__ = ["matrix_shape", "matrix_ranks"]


def matrix_shape(shape: Sequence[int], rollup: int = 1) -> tuple[int, int]:
    """``(N1*...*Nd, Nd+1*...*NN)`` with ``d = min(rollup, ndim - 1)`` (a 2-D shape is returned as is)."""
    shape = tuple(int(n) for n in shape)
    if len(shape) < 2:
        raise ValueError(f"the matrix layout needs at least 2 dimensions, got shape {shape}")
    if not _is_int(rollup) or rollup < 1:
        raise ValueError(f"rollup={rollup!r} is invalid: use an int >= 1 (the number of leading modes rolled up)")
    d = min(int(rollup), len(shape) - 1)
    return math.prod(shape[:d]), math.prod(shape[d:])


def matrix_ranks(spec: RankSpec, mshape: Sequence[int]) -> tuple[int | None, int | None]:
    """Per-mode ranks of a ``(m, n)`` view for GaLore's one-sided projection of the smaller side.

    The smaller side ``s = min(m, n)`` is projected (the left one when ``m == n``); the other mode gets ``None``.
    A float ``f`` in (0, 1] keeps a fraction ``f`` of the elements: ``r = clamp(floor(f * s + 0.5), 1, s)``;
    an int ``r`` gives ``min(r, s)``. Per-mode sequences are rejected (``ValueError``): the matrix path has a
    single rank.
    """
    check_rank_spec(spec)
    if isinstance(spec, Sequence):
        raise ValueError(
            f"rank={list(spec)!r}: per-mode ranks apply to Tucker projections of tensors with 3+ "
            "modes; the matrix (GaLore) path of 2-D views takes one int or float rank — put such "
            "parameters in their own param group with e.g. rank=0.25"
        )
    m, n = int(mshape[0]), int(mshape[1])
    side = min(m, n)
    r = scalar_rank(spec, side)
    return (r, None) if m <= n else (None, r)
