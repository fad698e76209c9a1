"""The optimizer state of :class:`~app.optim.TensorGaLoreAdamW`: every key a parameter's state can hold, with its
shape, dtype and bytes, for a given layout, ranks and options. The one description of the state: the
optimizer, the memory estimate (``app.memory_estimate``), the subspace callback's byte budget and the benchmarks
all read it, and ``tests/optim/test_schema.py`` checks it against the real state for every combination of options.

Per parameter (plain tensors, so ``torch.load(weights_only=True)`` works), once it has stepped:

* always: ``step`` (0-d float32, host); ``exp_avg`` (first moment: the parameter's dtype, complex for complex
  parameters) and ``exp_avg_sq`` (second moment ``|g|^2``: the real dtype), full-shaped for a full-tensor
  parameter, core-shaped for a projected one; after a skipped non-finite step, ``nonfinite_skips`` (0-d int64,
  host).
* projected (``galore=True`` groups, 2+ dimensions): ``factor_k`` (``(n_k, r_k)``, the parameter's dtype) for each
  projected mode ``k`` of the layout view; ``last_refresh`` and ``refreshes`` (0-d int64, host); the diagnostics
  of the last refresh (all float32): ``spectrum_k`` (``(n_k,)`` Gram eigenvalues per projected mode; absent after a
  solver failure), ``energy`` (0-d: ``||core||^2 / ||G||^2``) and, from the second refresh on, ``overlap`` (one
  per mode of the view: subspace drift); with ``residual="scaled"``, ``residual_norm`` (0-d, the real dtype).
* projected with ``sparse_ratio > 0`` (TensorGRaD): ``sparse_index`` (``(k,)`` int32, int64 for tensors of 2**31
  or more elements), ``sparse_exp_avg`` (``(k,)`` parameter dtype), ``sparse_exp_avg_sq`` (``(k,)`` real),
  ``sparse_energy`` (0-d float32), with ``k`` = :func:`sparse.sparse_count`.
* ``moment_dtype="bfloat16"``: the four moments are stored in bfloat16 between steps, complex ones as real and
  imaginary parts (a trailing dimension of 2).

The ranks are the factors' shapes; they are not stored twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import sparse
from .layout import Layout, core_shape, group_layout

__all__ = [
    "StateEntry",
    "HOST_KEYS",
    "FIRST_MOMENTS",
    "SECOND_MOMENTS",
    "SPARSE_KEYS",
    "real_dtype",
    "param_state_schema",
    "group_param_schema",
    "schema_bytes",
    "predict_state_bytes",
    "tensor_state_bytes",
    "factor_keys",
    "factors_from_state",
]

HOST_KEYS = frozenset({"step", "last_refresh", "refreshes", "nonfinite_skips"})
"""Entries kept on the host (like torch's ``step``): read for refresh decisions without a device sync."""
FIRST_MOMENTS = ("exp_avg", "sparse_exp_avg")  # complex for complex parameters
SECOND_MOMENTS = ("exp_avg_sq", "sparse_exp_avg_sq")  # always real
SPARSE_KEYS = ("sparse_index", "sparse_exp_avg", "sparse_exp_avg_sq", "sparse_energy")


@dataclass(frozen=True)
class StateEntry:
    """One tensor of a parameter's optimizer state."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype of ``dtype`` (float32 for complex64; real dtypes unchanged)."""
    return torch.empty((), dtype=dtype).real.dtype


def _moment(key: str, shape: Sequence[int], dtype: torch.dtype, bf16: bool) -> StateEntry:
    if not bf16:
        return StateEntry(key, tuple(shape), dtype)
    return StateEntry(key, (*shape, 2) if dtype.is_complex else tuple(shape), torch.bfloat16)


def param_state_schema(
    shape: Sequence[int],
    dtype: torch.dtype,
    layout: Layout | None,
    options: Mapping[str, Any],
    *,
    refreshes: int = 1,
    skipped: bool = False,
) -> tuple[StateEntry, ...]:
    """Every state entry of a parameter of ``shape``/``dtype`` with projection ``layout`` (``None``: full-tensor
    Adam) under group ``options`` (``moment_dtype``, ``sparse_ratio``, ``residual`` are read), once it has stepped
    and its subspace has been computed ``refreshes`` times (its first step is the first; the solver succeeded),
    with ``nonfinite_skips`` if ``skipped``."""
    bf16 = options["moment_dtype"] == "bfloat16"
    real = real_dtype(dtype)
    f32, i64 = torch.float32, torch.int64
    entries = [StateEntry("step", (), f32)]
    if skipped:
        entries.append(StateEntry("nonfinite_skips", (), i64))
    if layout is None:
        return (*entries, _moment("exp_avg", shape, dtype, bf16), _moment("exp_avg_sq", shape, real, bf16))
    view, ranks = layout
    core = core_shape(layout)
    entries += [_moment("exp_avg", core, dtype, bf16), _moment("exp_avg_sq", core, real, bf16)]
    for k, (n, r) in enumerate(zip(view, ranks, strict=True)):
        if r is not None:
            entries += [StateEntry(f"factor_{k}", (n, r), dtype), StateEntry(f"spectrum_{k}", (n,), f32)]
    entries += [StateEntry("energy", (), f32), StateEntry("last_refresh", (), i64), StateEntry("refreshes", (), i64)]
    if refreshes >= 2:
        entries.append(StateEntry("overlap", (len(view),), f32))
    if options["residual"] == "scaled":
        entries.append(StateEntry("residual_norm", (), real))
    numel = math.prod(shape)
    k = sparse.sparse_count(options["sparse_ratio"], numel)
    if k:
        entries += [
            StateEntry("sparse_index", (k,), sparse.index_dtype(numel)),
            _moment("sparse_exp_avg", (k,), dtype, bf16),
            _moment("sparse_exp_avg_sq", (k,), real, bf16),
            StateEntry("sparse_energy", (), f32),
        ]
    return tuple(entries)


def group_param_schema(
    p: Tensor, group: Mapping[str, Any], *, rank: object = None, refreshes: int = 1, skipped: bool = False
) -> tuple[StateEntry, ...]:
    """:func:`param_state_schema` of parameter ``p`` in a ``TensorGaLoreAdamW`` param group (``rank`` overrides
    the group's rank)."""
    layout = group_layout(p, group, rank)
    return param_state_schema(p.shape, p.dtype, layout, group, refreshes=refreshes, skipped=skipped)


def schema_bytes(entries: Iterable[StateEntry]) -> int:
    return sum(e.nbytes for e in entries)


def predict_state_bytes(param_groups: Iterable[Mapping[str, Any]], refreshes: int = 1, per_group: bool = False):
    """Bytes of state that ``TensorGaLoreAdamW`` param groups hold once every trainable parameter has stepped
    (``refreshes`` as in :func:`param_state_schema`): the total, or a list with one total per group."""
    totals = [
        sum(schema_bytes(group_param_schema(p, g, refreshes=refreshes)) for p in g["params"] if p.requires_grad)
        for g in param_groups
    ]
    return totals if per_group else sum(totals)


def tensor_state_bytes(state: Mapping[Any, Mapping[str, Any]], param_groups: Iterable[Mapping[str, Any]]) -> list[int]:
    """Measured bytes of every tensor in an optimizer's ``state``, one total per param group."""
    values = ((v for p in g["params"] for v in state.get(p, {}).values()) for g in param_groups)
    return [sum(v.numel() * v.element_size() for v in vs if isinstance(v, Tensor)) for vs in values]


def factor_keys(state: Mapping[str, Any]) -> dict[int, str]:
    """``{mode: "factor_<mode>"}`` for the factors a parameter's state holds."""
    return {int(k[len("factor_") :]): k for k in state if k.startswith("factor_")}


def factors_from_state(state: Mapping[str, Any], layout: Layout) -> list[Tensor | None] | None:
    """The stored factors if they fit ``layout``'s view and projected modes (ranks may differ), else ``None``."""
    view, ranks = layout
    keys = factor_keys(state)
    if set(keys) != {k for k, r in enumerate(ranks) if r is not None}:
        return None
    fs: list[Tensor | None] = [None] * len(view)
    for k, key in keys.items():
        u = state[key]
        if u.ndim != 2 or u.shape[0] != view[k]:
            return None
        fs[k] = u
    return fs
