"""Subspace refresh: new factors from a gradient (solver dispatch through :data:`SOLVERS`), the moments carried
into the new basis (``refresh_moments``), the refresh counters and diagnostics written to the state.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from . import diagnostics, tucker
from .layout import Layout, core_shape
from .schema import factors_from_state, real_dtype

__all__ = ["SOLVERS", "solve", "transfer_moments", "refresh_subspace"]

logger = logging.getLogger(__name__)

Solver = Callable[[Tensor, Sequence[int | None], "Sequence[Tensor | None] | None", int], tucker.TuckerResult]


def _hooi(g: Tensor, ranks, old, iters: int) -> tucker.TuckerResult:
    """HOOI warm-started from the previous factors when their ranks still fit, else from HOSVD."""
    same_ranks = old is not None and all(
        (u is None and r is None) or (u is not None and r is not None and u.shape[1] == r)
        for u, r in zip(old, ranks, strict=True)
    )
    start = old if same_ranks else tucker.hosvd(g, ranks).factors
    return tucker.hooi(g, start, iters)


SOLVERS: dict[str, Solver] = {
    "hosvd": lambda g, ranks, old, iters: tucker.hosvd(g, ranks),
    "hooi": _hooi,
    "tensorly": lambda g, ranks, old, iters: tucker.tensorly_tucker(g, ranks, n_iter_max=iters),
}
"""``solver`` option -> ``(gradient, ranks, previous factors or None, solver_iters) -> TuckerResult``."""


def solve(g: Tensor, ranks, old, group: Mapping[str, Any]) -> tucker.TuckerResult:
    return SOLVERS[group["solver"]](g, ranks, old, group["solver_iters"])


def _resize(t: Tensor, shape: Sequence[int]) -> Tensor:
    """Crop or zero-pad ``t`` to ``shape`` along every dimension (leading entries kept)."""
    if tuple(t.shape) == tuple(shape):
        return t
    out = t.new_zeros(shape)
    idx = tuple(slice(0, min(a, b)) for a, b in zip(t.shape, shape, strict=True))
    out[idx] = t[idx]
    return out


def transfer_moments(
    exp_avg: Tensor, exp_avg_sq: Tensor, old: Sequence[Tensor | None], new: Sequence[Tensor | None], rule: str
) -> tuple[Tensor, Tensor]:
    """Moments in the new basis; see ``refresh_moments`` in :class:`~app.optim.TensorGaLoreAdamW`."""
    shape = [exp_avg.shape[k] if u is None else u.shape[1] for k, u in enumerate(new)]
    if rule == "reset":
        return exp_avg.new_zeros(shape), exp_avg_sq.new_zeros(shape)
    if rule == "keep":
        return _resize(exp_avg, shape), _resize(exp_avg_sq, shape)
    rot = [None if u is None else u.mH @ v for u, v in zip(new, old, strict=True)]  # (r_new, r_old) per mode
    m = tucker.multi_mode_dot(exp_avg, rot)
    v = tucker.multi_mode_dot(exp_avg_sq, [None if r is None else tucker.abs_sq(r) for r in rot])
    return m, v.clamp_min_(0)


def _ranks(factors: Sequence[Tensor | None]) -> tuple[int | None, ...]:
    return tuple(None if u is None else int(u.shape[1]) for u in factors)


def refresh_subspace(
    state: dict[str, Any],
    grad: Tensor,
    layout: Layout,
    param: Tensor,
    group: Mapping[str, Any],
    grad_norm_sq: Tensor | None,
    describe: Callable[[], str],
) -> Tensor:
    """New factors for a parameter from its gradient ``grad`` (in the layout view), or the old ones if the solver
    fails (with a warning naming ``describe()``); moments carried over; counters and diagnostics written.
    Returns the core of ``grad`` in the new subspace."""
    view, ranks = layout
    old = factors_from_state(state, layout)
    s = int(state["step"])
    try:
        core, new, spectra = solve(grad, ranks, old, group)
        if not bool(torch.stack([torch.isfinite(u).all() for u in new if u is not None]).all()):  # 1 sync
            raise torch.linalg.LinAlgError("the solver returned non-finite factors")
    except torch.linalg.LinAlgError as err:
        fallback = "keeping the previous factors" if old is not None else "using coordinate subspaces"
        warnings.warn(
            f"TensorGaLoreAdamW: subspace solver {group['solver']!r} failed for {describe()} at step "
            f"{s} ({err}); {fallback} until the next refresh",
            RuntimeWarning,
            stacklevel=5,
        )
        new = (
            old
            if old is not None
            else [
                None if r is None else torch.eye(n, r, dtype=grad.dtype, device=grad.device)
                for n, r in zip(view, ranks, strict=True)
            ]
        )
        spectra, core = None, tucker.project(grad, new)
    new_core = core_shape((view, _ranks(new)))
    if old is not None and "exp_avg" in state and tuple(state["exp_avg"].shape) == core_shape((view, _ranks(old))):
        rule = group["refresh_moments"]
        exp_avg, exp_avg_sq = transfer_moments(state["exp_avg"], state["exp_avg_sq"], old, new, rule)
    else:
        exp_avg = torch.zeros(new_core, dtype=param.dtype, device=param.device)
        exp_avg_sq = torch.zeros(new_core, dtype=real_dtype(param.dtype), device=param.device)
    stale = ("factor_",) if spectra is None else ("factor_", "spectrum_")
    for key in [k for k in state if k.startswith(stale)]:
        del state[key]
    state["exp_avg"], state["exp_avg_sq"] = exp_avg, exp_avg_sq
    for k, u in enumerate(new):
        if u is not None:
            state[f"factor_{k}"] = u
    diagnostics.record_refresh(state, core, grad, grad_norm_sq, new, old, spectra)
    state["last_refresh"] = torch.tensor(s, dtype=torch.int64)
    state["refreshes"] = state.get("refreshes", torch.zeros((), dtype=torch.int64)) + 1
    logger.debug("refreshed %s at step %d: core %s", describe(), s, tuple(new_core))
    return core
