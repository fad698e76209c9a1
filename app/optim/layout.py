"""Layouts and ranks: which view of a parameter is projected, on which modes, at which ranks (pure functions).

* **Tucker** (Tensor-GaLore): a tensor of 3+ modes is projected on every mode (or the modes ``proj_modes`` lists),
  one rank per mode (:func:`resolve_ranks`).
* **Matrix** (the GaLore baseline; Zhao et al., 2024): a matrix ``M`` of shape ``(m, n)`` is projected on its
  smaller side: with ``m <= n`` the core is ``U^H M`` (``(r, n)``), otherwise ``M V`` (``(m, r)``). A tensor of shape
  ``(N1, ..., NN)`` is first rolled up (``rollup=d``) into ``(N1*...*Nd, Nd+1*...*NN)``. This is a Tucker projection
  of the 2-mode view with a factor on one mode only (ranks ``(r, None)`` or ``(None, r)``), so the same
  ``tucker.project`` / ``project_back`` / solver code serves both paths.

A *layout* is ``(view_shape, ranks)``: the shape the gradient is reshaped to and one rank per mode of that view
(``None``: the mode is kept whole), or ``None`` for a parameter that is not projected.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from .checks import is_float, is_int, round_half_up

__all__ = [
    "RankSpec",
    "Layout",
    "check_rank_spec",
    "check_modes",
    "scalar_rank",
    "projected_modes",
    "resolve_ranks",
    "matrix_shape",
    "matrix_ranks",
    "projection_layout",
    "group_layout",
    "group_modes",
    "core_shape",
    "kept_fraction",
]

RankSpec = int | float | Sequence[int | float | None]
"""A rank: int (per mode), float in (0, 1] (fraction of elements), or a per-mode sequence of ints/fractions
(``None``: the mode is not projected)."""


# ----------------------------------------------------------------------------------------------- Tucker ranks


def _check_scalar_rank(r: object, what: str) -> None:
    if is_int(r):
        if r < 1:
            raise ValueError(
                f"{what}={r!r} is invalid: an int rank must be >= 1 (e.g. 8); use a float in (0, 1] for a fraction"
            )
    elif is_float(r):
        if not (0.0 < r <= 1.0):  # also rejects nan
            raise ValueError(
                f"{what}={r!r} is invalid: a float rank is a fraction and must be in (0, 1] "
                "(e.g. 0.25); use an int for an absolute rank"
            )
    else:
        raise TypeError(
            f"{what}={r!r} has type {type(r).__name__}; expected an int, a float in (0, 1] or a sequence of them"
        )


def check_rank_spec(spec: object, name: str = "rank") -> None:
    """Validate a rank spec without a shape (raises ``TypeError``/``ValueError`` naming the value and the fix)."""
    if isinstance(spec, (str, bytes)) or isinstance(spec, Tensor):
        raise TypeError(
            f"{name}={spec!r} has type {type(spec).__name__}; expected an int, a float in (0, 1] or a sequence of them"
        )
    if isinstance(spec, Sequence):
        if len(spec) == 0:
            raise ValueError(f"{name}={spec!r} is empty; give one rank per mode, e.g. [32, 32, 16, 9]")
        if all(r is None for r in spec):
            raise ValueError(
                f"{name}={list(spec)!r} projects no mode; give at least one mode a rank, e.g. [8, 8, None, None]"
            )
        for i, r in enumerate(spec):
            if r is not None:
                _check_scalar_rank(r, f"{name}[{i}]")
    else:
        _check_scalar_rank(spec, name)


@functools.lru_cache(maxsize=1024)
def _fraction_ranks(f: float, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-mode ranks whose product is the nearest to ``f * prod(shape)``, spread evenly over the modes.

    Start from rank 1 everywhere and repeatedly add 1 to the least-kept mode (smallest ``r_n / n``; ties: the
    earlier mode) among those whose increment keeps the product within ``f * prod(shape)``, until none fits.
    Then one more +1, on the mode whose increment overshoots least, is taken if it lands nearer the target than
    the product already is (ties stay below). So the core keeps the achievable fraction nearest ``f``, evenly
    spread; the floor of 1 per mode can exceed it for tiny ``f``. Cached: it runs at every step.
    """
    ranks = [1] * len(shape)
    target = f * math.prod(shape)
    budget = target * (1 + 1e-12)
    product = 1
    while True:
        growable = [k for k, (r, n) in enumerate(zip(ranks, shape, strict=True)) if r < n]
        fits = [k for k in growable if product // ranks[k] * (ranks[k] + 1) <= budget]
        if not fits:
            break
        k = min(fits, key=lambda i: (ranks[i] / shape[i], i))
        product = product // ranks[k] * (ranks[k] + 1)
        ranks[k] += 1
    if growable:
        k = min(growable, key=lambda i: (product // ranks[i] * (ranks[i] + 1), ranks[i] / shape[i], i))
        over = product // ranks[k] * (ranks[k] + 1)
        if over - target < target - product:
            ranks[k] += 1
    return tuple(ranks)


def scalar_rank(r: int | float, n: int) -> int:
    """The rank an int or fraction ``r`` gives a mode (or matrix side) of size ``n``: ``min(r, n)`` for an int,
    ``clamp(floor(n * r + 0.5), 1, n)`` (round half up) for a float in (0, 1]."""
    return min(int(r), n) if is_int(r) else min(max(round_half_up(n * float(r)), 1), n)


def check_modes(modes: object, name: str = "proj_modes") -> None:
    """Validate a projected-modes spec without a shape: ``None`` (every mode) or distinct ints (negative ones
    count from the end)."""
    if modes is None:
        return
    if isinstance(modes, (str, bytes, Tensor)) or not isinstance(modes, Sequence):
        raise TypeError(f"{name}={modes!r} is invalid: use None (every mode) or a list of mode indices, e.g. [0, 1]")
    if len(modes) == 0 or not all(is_int(k) for k in modes):
        raise ValueError(f"{name}={modes!r} is invalid: use a non-empty list of mode indices (ints), e.g. [0, 1]")


def projected_modes(modes: Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """The sorted, non-negative projected modes of an ``ndim``-mode tensor (all for ``None``); raises
    ``ValueError`` for an index out of range or a mode listed twice."""
    if modes is None:
        return tuple(range(ndim))
    check_modes(modes)
    out = []
    for k in modes:
        if not -ndim <= k < ndim:
            raise ValueError(f"proj_modes={list(modes)!r}: mode {k} does not exist in a {ndim}-mode tensor")
        out.append(int(k) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"proj_modes={list(modes)!r} lists a mode twice (for a {ndim}-mode tensor)")
    return tuple(sorted(out))


def resolve_ranks(spec: RankSpec, shape: Sequence[int], modes: Sequence[int] | None = None) -> tuple[int | None, ...]:
    """Per-mode Tucker ranks for a tensor of ``shape`` (``None`` for a mode that is not projected).

    ``modes``: the modes that may be projected (default: all; see :func:`projected_modes`); the others get
    ``None`` and are kept whole and unrotated, and a float rank is then reached on the projected modes alone.

    * ``float f`` in (0, 1]: the core keeps the fraction of the elements nearest ``f`` that evenly spread ranks
      reach (:func:`_fraction_ranks`: from rank 1, +1 on the least-kept mode, ``r_n / n``, while the product
      stays within ``f``, then possibly one step over it if that lands nearer; at least 1 per mode, so size-1
      modes keep 1). Examples at 0.25: ``(64, 64, 32, 17)`` gives ``(47, 45, 22, 12)`` (25.1% of the elements),
      ``(16, 16, 8, 5)`` gives ``(12, 11, 5, 4)`` (25.8%; the next lower choice, ``(11, 11, 5, 4)``, is 23.6%).
    * ``int r`` >= 1: ``min(r, n)`` for every mode.
    * sequence (one entry per mode): an int entry is ``min(r, n)``; a float entry ``f`` in (0, 1] is
      ``clamp(floor(n * f + 0.5), 1, n)`` (round half up); ``None`` leaves the mode unprojected. Entries of
      modes outside ``modes`` are ignored (``None``).

    Raises ``TypeError``/``ValueError`` for anything else (bools, floats outside (0, 1], ints < 1, a sequence
    whose length is not ``len(shape)``, a sequence that projects none of ``modes``).
    """
    check_rank_spec(spec)
    shape = tuple(int(n) for n in shape)
    keep = projected_modes(modes, len(shape))
    if isinstance(spec, Sequence):
        if len(spec) != len(shape):
            raise ValueError(
                f"rank={list(spec)!r} has {len(spec)} entries but the tensor has {len(shape)} modes "
                f"(shape {shape}); give one rank per mode or a single int/float"
            )
        out = tuple(
            None if r is None or k not in keep else scalar_rank(r, n)
            for k, (r, n) in enumerate(zip(spec, shape, strict=True))
        )
        if all(r is None for r in out):
            raise ValueError(
                f"rank={list(spec)!r} with proj_modes={list(keep)!r} projects no mode of shape {shape}; "
                "give a projected mode a rank"
            )
        return out
    if is_int(spec):
        return tuple(min(int(spec), n) if k in keep else None for k, n in enumerate(shape))
    sub = _fraction_ranks(float(spec), tuple(shape[k] for k in keep))
    if len(keep) == len(shape):
        return sub
    out: list[int | None] = [None] * len(shape)
    for k, r in zip(keep, sub, strict=True):
        out[k] = r
    return tuple(out)


Layout = tuple[tuple[int, ...], tuple[int | None, ...]]
"""``(view_shape, ranks)``: the projected view of a parameter and one rank per mode of it (``None``: unprojected)."""


# ----------------------------------------------------------------------------------------------- matrix view


def matrix_shape(shape: Sequence[int], rollup: int = 1) -> tuple[int, int]:
    """``(N1*...*Nd, Nd+1*...*NN)`` with ``d = min(rollup, ndim - 1)`` (a 2-D shape is returned as is)."""
    shape = tuple(int(n) for n in shape)
    if len(shape) < 2:
        raise ValueError(f"the matrix layout needs at least 2 dimensions, got shape {shape}")
    if not is_int(rollup) or rollup < 1:
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


# ----------------------------------------------------------------------------------------------- layouts


def projection_layout(
    shape: Sequence[int],
    rank: RankSpec,
    proj: str = "tucker",
    rollup: int = 1,
    proj_modes: Sequence[int] | None = None,
) -> Layout | None:
    """How a parameter of ``shape`` is projected: ``(view_shape, ranks)`` or ``None`` (not projected).

    * ``ndim <= 1``: ``None`` (full-tensor Adam; there is nothing to project);
    * ``proj="tucker"`` and ``ndim >= 3``: the tensor itself, one rank per mode (:func:`resolve_ranks`;
      ``None`` for modes outside ``proj_modes``);
    * ``proj="matrix"``, or any 2-D parameter: the ``(m, n)`` matrix view of :func:`matrix_shape` with
      ``rollup`` and a rank on its smaller side only (:func:`matrix_ranks`; ``proj_modes`` is ignored).
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) <= 1:
        return None
    if proj == "tucker" and len(shape) >= 3:
        return shape, resolve_ranks(rank, shape, proj_modes)
    view = matrix_shape(shape, rollup)
    return view, matrix_ranks(rank, view)


def group_modes(group: Mapping[str, Any]) -> Sequence[int] | None:
    """The modes a group projects: its ``proj_modes``, or for ``proj_modes="auto"`` the ``layout_modes`` that the
    code which built the group knows (``app.param_groups.split_param_groups``: an FNO spectral weight's channel
    modes), and every mode (``None``) for a tensor whose layout nobody gave."""
    modes = group["proj_modes"]
    return group["layout_modes"] if modes == "auto" else modes


def group_layout(p: Tensor, group: Mapping[str, Any], rank: RankSpec | None = None) -> Layout | None:
    """:func:`projection_layout` of parameter ``p`` under the options of a ``TensorGaLoreAdamW`` param group
    (``rank`` overrides the group's rank); ``None`` when the group is not projected."""
    if not group["galore"]:
        return None
    return projection_layout(
        p.shape, group["rank"] if rank is None else rank, group["proj"], group["rollup"], group_modes(group)
    )


def kept_fraction(layout: Layout) -> float:
    """The fraction of a parameter's elements its core keeps (``prod(core) / prod(view)``)."""
    return math.prod(core_shape(layout)) / math.prod(layout[0])


def core_shape(layout: Layout) -> tuple[int, ...]:
    """The shape of the core (and of the moments) of a layout: ``r_k`` on projected modes, ``n_k`` elsewhere."""
    view, ranks = layout
    return tuple(n if r is None else r for n, r in zip(view, ranks, strict=True))
