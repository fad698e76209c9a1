"""Tensor-GaLore AdamW: Tucker-projected, complex-correct Adam with checkpointable, plain-tensor state.

Algorithm (George et al., "Tensor-GaLore", Algorithm 1) for a parameter ``W`` with gradient ``G`` in a projected
group; every operation uses conjugate transposes, so complex weights (FNO spectral weights) are handled exactly:

1. at the parameter's first step, every ``update_proj_gap`` steps after its last refresh, or when
   :meth:`TensorGaLoreAdamW.request_refresh` asked for it: recompute one orthonormal factor ``U_k`` per mode
   from ``G`` (``solver``) and carry the moments over (``refresh_moments``: by default they restart from zero,
   with the bias-correction ``t`` counted from the refresh);
2. ``R = G x_1 U_1^H ... x_N U_N^H`` (the core; a few percent to a few tens of percent of ``G``);
3. ``M = b1 M + (1 - b1) R`` (complex), ``V = b2 V + (1 - b2) |R|^2`` (real; see :func:`tucker.abs_sq`);
4. ``W = (1 - lr * weight_decay) W - lr * scale * (M_hat / (sqrt(V_hat) + eps)) x_1 U_1 ... x_N U_N``
   with the bias corrections ``M_hat = M / (1 - b1^t)``, ``V_hat = V / (1 - b2^t)``.

Groups with ``galore=False`` (and 0-/1-D parameters of projected groups) get the same update on full tensors
with no projection: for real parameters this is exactly ``torch.optim.AdamW`` (same operations, same bits);
for complex ones the second moment is ``|g|^2`` (one real number per element) rather than torch's separate
squares of the real and imaginary parts.

State per projected parameter (plain tensors, so ``torch.load(weights_only=True)`` works):
``step`` (0-d float32, host), ``exp_avg`` (core-shaped, parameter dtype), ``exp_avg_sq`` (core-shaped, real),
``factor_k`` (``(n_k, r_k)`` for each projected mode ``k`` of the layout), ``spectrum_k`` (``(n_k,)`` float32
Gram eigenvalues of the last refresh, for rank selection and diagnostics), ``energy`` (0-d float32: captured
energy ``||R||^2 / ||G||^2`` at the last refresh), ``overlap`` (per mode, float32: subspace drift at the last
refresh, from the second refresh on), ``last_refresh`` and ``refreshes`` (0-d int64, host) and,
after a skipped non-finite step, ``nonfinite_skips`` (0-d int64, host); with ``residual="scaled"``,
``residual_norm`` (0-d, the parameter's real dtype: the last residual-update norm, for the growth limiter).
The ranks are the factors' shapes.
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..memory import optimizer_state_bytes
from . import tucker
from .matrix import matrix_ranks, matrix_shape

__all__ = [
    "TensorGaLoreAdamW",
    "group_layout",
    "NonFiniteGradientError",
    "tensor_galore_adamw",
    "projection_layout",
]

logger = logging.getLogger(__name__)

_PROJ = ("tucker", "matrix")
_SOLVERS = ("hosvd", "hooi", "tensorly")
_REFRESH_MOMENTS = ("keep", "project", "reset")
_NONFINITE = ("error", "skip")
_COMPLEX_NORM = ("element", "component")
_RESIDUAL = ("none", "scaled")
# state entries kept on the host (like torch's ``step``): read for refresh decisions without a device sync
_HOST_KEYS = frozenset({"step", "last_refresh", "refreshes", "nonfinite_skips"})


class NonFiniteGradientError(FloatingPointError):
    """A parameter's gradient contains inf or nan and its group has ``nonfinite="error"``."""


# ------------------------------------------------------------------------------------------ validation


def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is invalid; choose one of {', '.join(map(repr, choices))}")


def _check_real(name: str, value: object, lo: float, example: str, *, strict: bool = False) -> None:
    if not _is_number(value):
        raise TypeError(f"{name}={value!r} has type {type(value).__name__}; use a float, e.g. {name}={example}")
    if not (math.isfinite(value) and (value > lo if strict else value >= lo)):
        raise ValueError(
            f"{name}={value!r} is invalid: use a finite float {'>' if strict else '>='} {lo:g}, e.g. {name}={example}"
        )


def _check_options(group: dict[str, Any]) -> None:
    """Validate every option of a param group (or of ``defaults``); the messages name the value and the fix."""
    _check_real("lr", group["lr"], 0.0, "1e-3")
    betas = group["betas"]
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
        raise TypeError(f"betas={betas!r} is invalid: use a pair of floats, e.g. betas=(0.9, 0.999)")
    for i, b in enumerate(betas):
        if not _is_number(b) or not 0.0 <= b < 1.0:
            raise ValueError(f"betas[{i}]={b!r} is invalid: each beta must be in [0, 1), e.g. betas=(0.9, 0.999)")
    _check_real("eps", group["eps"], 0.0, "1e-8")
    _check_real("weight_decay", group["weight_decay"], 0.0, "1e-4")
    _check_real("scale", group["scale"], 0.0, "1.0", strict=True)
    for key in ("galore", "refresh_pending"):
        if not isinstance(group[key], bool):
            raise TypeError(f"{key}={group[key]!r} must be a bool (True or False), got {type(group[key]).__name__}")
    tucker.check_rank_spec(group["rank"])
    gap = group["update_proj_gap"]
    if gap is not None and (not tucker._is_int(gap) or gap < 1):
        raise ValueError(
            f"update_proj_gap={gap!r} is invalid: use an int >= 1 (steps between refreshes), or None "
            "to refresh only at the first step and on request_refresh()"
        )
    _check_choice("proj", group["proj"], _PROJ)
    tucker.check_modes(group["proj_modes"])
    if not tucker._is_int(group["rollup"]) or group["rollup"] < 1:
        raise ValueError(
            f"rollup={group['rollup']!r} is invalid: use an int >= 1 (leading modes rolled into the "
            "rows of the matrix view), e.g. rollup=1"
        )
    _check_choice("solver", group["solver"], _SOLVERS)
    if not tucker._is_int(group["solver_iters"]) or group["solver_iters"] < 1:
        raise ValueError(f"solver_iters={group['solver_iters']!r} is invalid: use an int >= 1, e.g. solver_iters=1")
    _check_choice("refresh_moments", group["refresh_moments"], _REFRESH_MOMENTS)
    _check_choice("nonfinite", group["nonfinite"], _NONFINITE)
    _check_choice("complex_norm", group["complex_norm"], _COMPLEX_NORM)
    _check_choice("residual", group["residual"], _RESIDUAL)
    limit = group["residual_limit"]
    if limit is not None:
        _check_real("residual_limit", limit, 1.0, "1.01", strict=True)


def projection_layout(
    shape: Sequence[int],
    rank: tucker.RankSpec,
    proj: str = "tucker",
    rollup: int = 1,
    proj_modes: Sequence[int] | None = None,
) -> tuple[tuple[int, ...], tuple[int | None, ...]] | None:
    """How a parameter of ``shape`` is projected: ``(view_shape, ranks)`` or ``None`` (not projected).

    * ``ndim <= 1``: ``None`` (full-tensor Adam; there is nothing to project);
    * ``proj="tucker"`` and ``ndim >= 3``: the tensor itself, one rank per mode (:func:`tucker.resolve_ranks`;
      ``None`` for modes outside ``proj_modes``);
    * ``proj="matrix"``, or any 2-D parameter: the ``(m, n)`` matrix view of :func:`matrix.matrix_shape` with
      ``rollup`` and a rank on its smaller side only (:func:`matrix.matrix_ranks`; ``proj_modes`` is ignored).
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) <= 1:
        return None
    if proj == "tucker" and len(shape) >= 3:
        return shape, tucker.resolve_ranks(rank, shape, proj_modes)
    view = matrix_shape(shape, rollup)
    return view, matrix_ranks(rank, view)


def group_layout(
    p: Tensor, group: dict[str, Any], rank: tucker.RankSpec | None = None
) -> tuple[tuple[int, ...], tuple[int | None, ...]] | None:
    """:func:`projection_layout` of parameter ``p`` under the options of param group ``group`` (``rank``
    overrides the group's rank); ``None`` when the group is not projected."""
    if not group.get("galore"):
        return None
    return projection_layout(
        p.shape,
        group["rank"] if rank is None else rank,
        group["proj"],
        group["rollup"],
        group.get("proj_modes"),
    )


# ------------------------------------------------------------------------------------------ functional kernel


def _ema_abs_sq_(v: Tensor, g: Tensor, beta2: float) -> None:
    """``v = beta2 * v + (1 - beta2) * |g|^2`` in place; real ``v``; the real case is torch.optim.AdamW's ops."""
    if g.is_complex():
        v.mul_(beta2).add_(tucker.abs_sq(g), alpha=1 - beta2)
    else:
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)


def tensor_galore_adamw(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    factors: list[Sequence[Tensor | None] | None],
    bias_steps: list[float],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    scale: float,
    complex_norm: str = "element",
    residual_grads: list[Tensor | None] | None = None,
    residual_norms: list[Tensor | None] | None = None,
    residual_limit: float | None = None,
) -> None:
    """One AdamW update per parameter, in a projected space where ``factors[i]`` is given.

    ``grads[i]`` is the projected gradient (the core, shaped like the moments) when ``factors[i]`` is a factor
    list (the parameter's layout view has ``len(factors[i])`` modes), else the full gradient. ``bias_steps[i]``
    is the ``t`` of the bias corrections. Updates ``params``, ``exp_avgs`` and ``exp_avg_sqs`` in place; the
    update of a projected parameter is multiplied by ``scale``. ``complex_norm`` is the convention of
    :func:`tucker.rms_divisor` for complex gradients. Full-tensor updates use exactly the operations of
    ``torch.optim.AdamW``'s single-tensor path (so real parameters get the same bits); full-tensor real
    parameters are updated together with ``torch._foreach_*`` ops (one call per operation instead of one per
    parameter: the same elementwise kernels, so the same bits, with less Python overhead).

    Residual step (``residual="scaled"`` in :class:`TensorGaLoreAdamW`): where ``residual_grads[i]`` is the full
    gradient ``G`` (in the layout view) of a projected parameter, the part of ``G`` outside the subspace,
    ``G - back(core)``, is added to the update with the norm ratio ``phi = ||D|| / ||core||`` of this step's
    Adam direction ``D`` (``M_hat / (sqrt(V_hat) + eps)`` in the core) to the core gradient, capped by
    ``residual_limit`` against ``residual_norms[i]`` (the last step's residual-update norm, a 0-d tensor of the
    parameter's real dtype updated in place; 0 means no cap). See ``residual`` in :class:`TensorGaLoreAdamW`.
    """
    dense: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, fs in enumerate(factors):
        if fs is None and not params[i].is_complex():
            dense.setdefault((params[i].device, params[i].dtype), []).append(i)
    for idx in dense.values():
        _dense_adamw_foreach(
            [params[i] for i in idx],
            [grads[i] for i in idx],
            [exp_avgs[i] for i in idx],
            [exp_avg_sqs[i] for i in idx],
            [bias_steps[i] for i in idx],
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            weight_decay=weight_decay,
        )
    done = {i for idx in dense.values() for i in idx}
    for i, param in enumerate(params):
        if i in done:
            continue
        grad, exp_avg, exp_avg_sq, fs = grads[i], exp_avgs[i], exp_avg_sqs[i], factors[i]
        step = bias_steps[i]
        if weight_decay != 0 and fs is None:
            param.mul_(1 - lr * weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        _ema_abs_sq_(exp_avg_sq, grad, beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        c = tucker.rms_divisor(grad.is_complex(), complex_norm)
        denom = (exp_avg_sq.sqrt() / (bias_correction2 * c) ** 0.5).add_(eps)  # c = 1: x * 1.0 is exact
        if fs is None:
            param.addcdiv_(exp_avg, denom, value=-step_size)
            continue
        direction = exp_avg / denom
        view = [direction.shape[k] if u is None else u.shape[0] for k, u in enumerate(fs)]
        decay = 1 - lr * weight_decay
        full = None if residual_grads is None else residual_grads[i]
        alpha = -step_size * scale
        if full is not None:  # lr * back(scale * D - phi * core) + lr * phi * G: one back-projection for both
            phi = _residual_ratio(direction, grad, full, residual_norms[i], bias_correction1, residual_limit)
            lr_phi = (lr * phi).to(grad.dtype)  # the core has G's dtype
            direction = direction.mul_(step_size * scale).sub_(grad * lr_phi)
            alpha = -1.0
        if param.is_contiguous():  # decay and update in one pass, the last mode product writing into param
            tucker.add_project_back_(param.view(view), direction, fs, alpha=alpha, beta=decay)
            target = param.view(view)
        else:
            update = tucker.project_back(direction, fs).reshape(param.shape)
            param.mul_(decay).add_(update, alpha=alpha)
            target = param
        if full is not None:
            target.sub_(full.reshape(target.shape) * lr_phi)


def _residual_ratio(
    direction: Tensor, core: Tensor, full: Tensor, last_norm: Tensor, bias_correction1: float, limit: float | None
) -> Tensor:
    """``phi`` (0-d tensor of the gradient's real dtype, at least float32; no host sync) of the residual step;
    writes this step's residual-update norm ``phi * ||G - back(core)||`` into ``last_norm``. ``||G -
    back(core)||^2 = ||G||^2 - ||core||^2`` because the factors are orthonormal, so the residual itself is never
    formed. A zero core gradient gives ``phi = 0``."""
    core_sq = tucker.norm_sq(core, dtype=None)
    d_norm = tucker.norm_sq(direction, dtype=None).sqrt() / bias_correction1
    tiny = torch.finfo(core_sq.dtype).tiny
    phi = torch.where(core_sq > 0, d_norm / core_sq.sqrt().clamp_min(tiny), torch.zeros_like(core_sq))
    res_norm = phi * (tucker.norm_sq(full, dtype=None) - core_sq).clamp_min(0).sqrt()
    if limit is not None:  # Fira's norm-growth limiter: the residual update grows at most by ``limit`` per step
        cap = limit * last_norm
        shrink = torch.where((last_norm > 0) & (res_norm > cap), cap / res_norm.clamp_min(tiny), torch.ones_like(phi))
        phi, res_norm = phi * shrink, res_norm * shrink
    last_norm.copy_(res_norm)
    return phi


def _dense_adamw_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    bias_steps: list[float],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """AdamW on full real tensors of one device and dtype: the single-tensor path's operations, as foreach ops."""
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, [(1 - beta2**t) ** 0.5 for t in bias_steps])
    torch._foreach_add_(denoms, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, [-(lr / (1 - beta1**t)) for t in bias_steps])


# ------------------------------------------------------------------------------------------ optimizer


@dataclass
class _Work:
    """One parameter's share of a step, built before any state changes (never stored)."""

    group_idx: int
    param_idx: int
    param: Tensor
    grad: Tensor  # full gradient, in the layout view for projected parameters
    layout: tuple[tuple[int, ...], tuple[int | None, ...]] | None
    refresh: bool = False
    core: Tensor | None = None
    grad_norm_sq: Tensor | None = None  # ||G||^2 at refresh steps (reused for the captured energy)
    extra: dict[str, Any] = field(default_factory=dict)  # a subclass's per-step data (see _before_projection)

    def finiteness_probe(self) -> Tensor:
        """A 0-d float32 that is finite iff the gradient is: ``||core||^2`` between refreshes (inf/nan in ``G``
        reach the core; one pass over a small tensor), ``||G||^2`` at refreshes and for full-tensor updates.
        A gradient whose squared norm overflows float32 counts as non-finite."""
        if self.core is not None:
            return tucker.norm_sq(self.core)
        if self.refresh:
            self.grad_norm_sq = tucker.norm_sq(self.grad)
            return self.grad_norm_sq
        return tucker.norm_sq(self.grad)


def _finiteness_probes(items: list[_Work]) -> list[Tensor]:
    """``it.finiteness_probe()`` for every item, in order; the float32 full-tensor gradients of each device are
    reduced by one ``torch._foreach_norm`` call (squared and cast like :func:`tucker.norm_sq`)."""
    probes: list[Tensor | None] = [None] * len(items)
    plain: dict[torch.device, list[int]] = {}  # float32 full-tensor gradients, by device
    for i, it in enumerate(items):
        if it.core is None and not it.refresh and it.grad.dtype == torch.float32:
            plain.setdefault(it.grad.device, []).append(i)
        else:
            probes[i] = it.finiteness_probe()
    for idx in plain.values():
        for i, norm in zip(idx, torch._foreach_norm([items[i].grad for i in idx]), strict=True):
            probes[i] = norm.square()
    return probes  # type: ignore[return-value]


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.empty((), dtype=dtype).real.dtype


def _factor_keys(state: dict[str, Any]) -> dict[int, str]:
    return {int(k[len("factor_") :]): k for k in state if k.startswith("factor_")}


def _factors_from_state(state: dict[str, Any], layout) -> list[Tensor | None] | None:
    """The stored factors if they fit ``layout``'s view and projected modes (ranks may differ), else ``None``."""
    view, ranks = layout
    keys = _factor_keys(state)
    if set(keys) != {k for k, r in enumerate(ranks) if r is not None}:
        return None
    fs: list[Tensor | None] = [None] * len(view)
    for k, key in keys.items():
        u = state[key]
        if u.ndim != 2 or u.shape[0] != view[k]:
            return None
        fs[k] = u
    return fs


def _resize(t: Tensor, shape: Sequence[int]) -> Tensor:
    """Crop or zero-pad ``t`` to ``shape`` along every dimension (leading entries kept)."""
    if tuple(t.shape) == tuple(shape):
        return t
    out = t.new_zeros(shape)
    idx = tuple(slice(0, min(a, b)) for a, b in zip(t.shape, shape, strict=True))
    out[idx] = t[idx]
    return out


def _transfer_moments(
    exp_avg: Tensor, exp_avg_sq: Tensor, old: Sequence[Tensor | None], new: Sequence[Tensor | None], rule: str
) -> tuple[Tensor, Tensor]:
    """Moments in the new basis; see ``refresh_moments`` in :class:`TensorGaLoreAdamW`."""
    core_shape = [exp_avg.shape[k] if u is None else u.shape[1] for k, u in enumerate(new)]
    if rule == "reset":
        return exp_avg.new_zeros(core_shape), exp_avg_sq.new_zeros(core_shape)
    if rule == "keep":
        return _resize(exp_avg, core_shape), _resize(exp_avg_sq, core_shape)
    rot = [None if u is None else u.mH @ v for u, v in zip(new, old, strict=True)]  # (r_new, r_old) per mode
    m = tucker.multi_mode_dot(exp_avg, rot)
    v = tucker.multi_mode_dot(exp_avg_sq, [None if r is None else tucker.abs_sq(r) for r in rot])
    return m, v.clamp_min_(0)


class TensorGaLoreAdamW(Optimizer):
    """AdamW with Tensor-GaLore (Tucker) or GaLore (matrix) gradient projection, correct for complex weights.

    A param group is projected when its ``galore`` option is True; other groups get complex-correct AdamW on full
    tensors (for real parameters this is exactly ``torch.optim.AdamW``). Every option below is a per-group key
    (overridable per param group, saved in ``state_dict()``). A subspace is computed at a parameter's first step,
    again every ``update_proj_gap`` steps, and when requested with :meth:`request_refresh`; :meth:`set_rank`
    changes the rank used from the next refresh on.

    Ranks (``rank``), for a parameter of shape ``(n_1, ..., n_N)``:

    * float ``f`` in (0, 1]: the core keeps the fraction of the elements nearest ``f`` that ranks spread evenly
      over the modes reach (:func:`tucker.resolve_ranks`: grow the least-kept mode by 1 while the core fits in
      ``f``, then one step over if that is nearer; at least 1 per mode): ``(64, 64, 32, 17)`` at 0.25 ->
      ``(47, 45, 22, 12)``, 25.1%; ``(16, 16, 8, 5)`` -> ``(12, 11, 5, 4)``, 25.8%. On the matrix path, ``f`` of
      the smaller side.
    * int ``r``: ``min(r, n_k)`` for every mode (matrix path: for the smaller side).
    * sequence: one entry per mode, an int (capped at ``n_k``), a fraction of that mode, or None (the mode is not
      projected) (Tucker path only).

    With ``proj_modes``, only the listed modes are projected (see below) and the rules apply to them.

    Args:
        params: parameters or param-group dicts (a group may override any option below).
        lr: learning rate.
        betas: coefficients of the running averages of the gradient and of its squared magnitude.
        eps: term added to the denominator for numerical stability.
        weight_decay: decoupled weight decay, applied in full space like ``torch.optim.AdamW``.
        galore: project this group's parameters (True) or run full-tensor AdamW (False). Parameters with fewer
            than 2 dimensions are never projected.
        rank: rank of the projection. A float ``f`` in (0, 1] keeps the nearest achievable fraction of the
            elements with evenly spread per-mode ranks (see above); an int is the rank of every mode (capped at
            its size); a sequence gives each mode an int or a fraction of it.
        update_proj_gap: steps between automatic subspace refreshes, counted from a parameter's last refresh;
            None refreshes only at the first step and on ``request_refresh()``.
        scale: factor applied to the back-projected update of projected parameters (GaLore's ``scale``).
        proj: ``"tucker"``: Tensor-GaLore, one factor per mode (``G x_k U_k^H``); ``"matrix"``: the GaLore
            baseline, a one-sided projection of the matrix view with ``rollup`` leading modes as rows.
            2-D parameters always use the matrix projection.
        proj_modes: the modes the Tucker path projects (mode indices, negative ones from the end), or None for
            every mode. The other modes are kept whole and unrotated (no factor, no mode product), and a float
            ``rank`` is then reached on the projected modes alone: ``proj_modes=[0, 1]`` with ``rank=0.25`` on an
            FNO spectral weight ``(in, out, m_1, m_2)`` compresses the channel modes to about half each
            (``(16, 16, 8, 5)`` -> ``(8, 8, 8, 5)``) and keeps every Fourier mode. How it trains against AdamW
            and against the all-mode form: BENCHMARKS.md, "Tensor-GaLore defaults" and the TensorGRaD section.
            Ignored by the matrix path.
        rollup: number of leading modes rolled up into the rows of the matrix view (``proj="matrix"``); capped
            at ``ndim - 1``.
        solver: ``"hosvd"``: sequentially truncated HOSVD through each mode's Gram matrix (``eigh``; fast, the
            default); ``"hooi"``: HOOI sweeps warm-started from the previous factors (from HOSVD at the first
            refresh or after a rank change); ``"tensorly"``: ``tensorly.decomposition.tucker(init="svd")``
            under a local pytorch backend (slow reference).
        solver_iters: HOOI sweeps for ``solver="hooi"``; ``n_iter_max`` for ``solver="tensorly"``.
        refresh_moments: what a refresh does to the Adam moments. ``"reset"`` (default): zero them and restart
            the bias correction from the refresh step, i.e. a fresh Adam in the new subspace (BENCHMARKS.md,
            "refresh_moments", compares the rules). ``"project"``: rotate them into the new basis; with
            ``R_k = U_k,new^H U_k,old`` the first moment becomes ``M x_k R_k`` (exact) and the second
            ``V x_k |R_k|^2`` (elementwise squared magnitudes: the exact second moment of the rotated coordinates
            if the old ones were uncorrelated). ``"keep"``: keep the coordinates as they are (GaLore's
            behaviour); if a mode's rank changes, moments are cropped or zero-padded along it (factor columns
            are sorted by energy, so leading coordinates persist). Rank changes are handled by all three rules.
        nonfinite: what a gradient with inf/nan does. ``"error"`` raises :class:`NonFiniteGradientError`
            naming the parameter and step; ``"skip"`` skips the whole optimizer step, all groups (like AMP's
            GradScaler: no moment, factor, step-count or parameter changes; a pending refresh waits), warns, and
            counts it in each parameter's ``nonfinite_skips``. Nothing is modified before the check, which costs
            one device-to-host read per step.
        complex_norm: how Adam normalises a complex coordinate (the second moment is always one real ``|g|^2``
            per entry). ``"element"``: divide by ``sqrt(V_hat)`` (the paper's Algorithm 1; a complex entry's step
            has modulus about ``lr``); ``"component"``: divide by ``sqrt(V_hat / 2)``, the RMS of the real and
            imaginary parts, so each part moves about ``lr`` as under ``torch.optim.AdamW`` (which views complex
            tensors as real pairs); same memory, a factor sqrt(2) in the step. See :func:`tucker.rms_divisor`.
        residual: what happens to the part of a projected gradient outside the subspace, ``G - back(core)``.
            ``"none"``: it is dropped (Tensor-GaLore, GaLore). ``"scaled"``: it is applied as a plain gradient
            step scaled by ``phi = ||D|| / ||core||``, the ratio by which Adam rescaled this step's core gradient
            into its direction ``D = M_hat / (sqrt(V_hat) + eps)`` (Fira's norm-based scaling, Chen et al. 2024,
            with one ratio per tensor). The update becomes ``lr * (scale * back(D) + phi * (G - back(core)))``:
            full-rank, still with core-sized moments. It costs one 4-byte norm per parameter of state, a few
            norms and one extra pass over ``G`` per step, and no extra mode product (both parts go through one
            back-projection). Not with TensorGRaD's sparse part (which takes entries of the same residual).
        residual_limit: Fira's norm-growth limiter for ``residual="scaled"``: the residual update's norm may grow
            by at most this factor per step (> 1; None: no limit); it stops a sudden large residual (e.g. a loss
            spike) from moving the weights by more than Adam's own step would.

    Group keys written by the control methods (also in ``defaults``): ``refresh_pending`` (bool).

    Example::

        opt = TensorGaLoreAdamW(
            [{"params": spectral_weights, "galore": True}, {"params": others}], lr=1e-3, rank=0.25)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        galore: bool = False,
        rank: int | float | Sequence[int | float | None] = 0.25,
        update_proj_gap: int | None = 200,
        scale: float = 1.0,
        proj: Literal["tucker", "matrix"] = "tucker",
        proj_modes: Sequence[int] | None = None,
        rollup: int = 1,
        solver: Literal["hosvd", "hooi", "tensorly"] = "hosvd",
        solver_iters: int = 1,
        refresh_moments: Literal["keep", "project", "reset"] = "reset",
        nonfinite: Literal["error", "skip"] = "error",
        complex_norm: Literal["element", "component"] = "component",
        residual: Literal["none", "scaled"] = "none",
        residual_limit: float | None = 1.01,
    ) -> None:
        if isinstance(betas, list):
            betas = tuple(betas)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            galore=galore,
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            proj=proj,
            proj_modes=tuple(proj_modes) if isinstance(proj_modes, list) else proj_modes,
            rollup=rollup,
            solver=solver,
            solver_iters=solver_iters,
            refresh_moments=refresh_moments,
            nonfinite=nonfinite,
            complex_norm=complex_norm,
            residual=residual,
            residual_limit=residual_limit,
            refresh_pending=False,
        )
        _check_options(defaults)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # options added after the first release get their defaults here
            group.setdefault("refresh_pending", False)
            group.setdefault("complex_norm", "element")  # state dicts saved before the option: their behaviour
            group.setdefault("proj_modes", None)
            group.setdefault("residual", "none")
            group.setdefault("residual_limit", 1.01)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (filled from ``defaults``) after validating its options and its parameters' ranks."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group, len(self.param_groups) - 1)
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    @staticmethod
    def _check_group(group: dict[str, Any], group_idx: int, rank: object = None) -> None:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        _check_options(group if rank is None else {**group, "rank": rank})
        if not group["galore"]:
            return
        for i, p in enumerate(group["params"]):
            try:
                group_layout(p, group, rank)
            except (TypeError, ValueError) as err:
                raise type(err)(f"param_groups[{group_idx}] {_param_name(group, i)}: {err}") from None

    # -------------------------------------------------------------------------------- control (policy side)

    def _groups(self, group_idx: int | None) -> list[dict[str, Any]]:
        if group_idx is None:
            return list(self.param_groups)
        if not tucker._is_int(group_idx) or not 0 <= group_idx < len(self.param_groups):
            raise ValueError(
                f"group_idx={group_idx!r} is invalid: use None (all groups) or an int in "
                f"[0, {len(self.param_groups) - 1}]"
            )
        return [self.param_groups[group_idx]]

    def request_refresh(self, group_idx: int | None = None) -> None:
        """Refresh the subspaces of the projected parameters of one group (or all) at the next :meth:`step`.

        Sets ``group["refresh_pending"] = True``; the next step that is not skipped refreshes and clears it.
        The automatic cadence restarts from that refresh.
        """
        for group in self._groups(group_idx):
            group["refresh_pending"] = True

    def set_rank(self, rank: int | float | Sequence[int | float | None], group_idx: int | None = None) -> None:
        """Set ``group["rank"]`` of one group (or all); it applies at each parameter's next refresh.

        The spec is validated against every projected parameter first; nothing changes if it is invalid.
        Moments are carried into the new shape by ``refresh_moments``.
        """
        groups = self._groups(group_idx)
        for group in groups:
            self._check_group(group, next(i for i, g in enumerate(self.param_groups) if g is group), rank=rank)
        for group in groups:
            group["rank"] = rank

    # -------------------------------------------------------------------------------- read-only diagnostics

    def subspace_stats(self, spectra: bool = False) -> list[dict[str, Any]]:
        """Per projected parameter (with state), plain Python numbers; reads device values back (for logging).

        Each entry: ``group``, ``index`` (position in the group), ``name`` (if the group has ``param_names``),
        ``shape``, ``view_shape``, ``ranks`` (per mode of the view; None for unprojected modes), ``core_numel``,
        ``step``, ``last_refresh`` (step index of the last refresh, 0-based), ``refreshes`` (refreshes done,
        including failed attempts that kept the old factors), ``energy`` (captured energy
        ``||core||^2/||G||^2`` at the last refresh), ``mode_energy`` (per mode: fraction of the eigenvalue sum of
        the Gram matrix the solver diagonalised that the kept rank covers; for the default sequential HOSVD the
        later modes' Gram matrices are of the already-truncated gradient), ``overlap`` (per mode, the mean
        squared cosine of the principal angles between the subspaces before and after the last refresh, 1 = no
        drift; None before a second refresh), ``nonfinite_skips``, ``state_bytes``
        and, with ``spectra=True``, ``spectra`` (those eigenvalues per mode, decreasing, lists of floats).
        """
        out = []
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                state = self.state.get(p, {})
                keys = _factor_keys(state)
                if not keys or "exp_avg_sq" not in state:
                    continue
                view_ndim = state["exp_avg_sq"].ndim  # real and core-shaped in every storage format
                ranks: list[int | None] = [None] * view_ndim
                view = list(state["exp_avg_sq"].shape)
                for k, key in keys.items():
                    view[k], ranks[k] = (int(n) for n in state[key].shape)
                # one device-to-host read per parameter: energy, then (kept, total) per mode with a spectrum
                spec = {k: state[f"spectrum_{k}"] for k in keys if f"spectrum_{k}" in state}
                numbers = [state["energy"].float().reshape(1)]
                if "overlap" in state:
                    numbers.append(state["overlap"].float().to(numbers[0].device))
                for k, s in spec.items():
                    numbers.append(torch.stack([s[: ranks[k]].sum(), s.sum()]).to(numbers[0].device))
                values = torch.cat(numbers).tolist()
                energy, values = values[0], values[1:]
                overlap: list[float | None] | None = None
                if "overlap" in state:
                    overlap = [None if r is None else x for x, r in zip(values[:view_ndim], ranks, strict=True)]
                    values = values[view_ndim:]
                mode_energy: list[float | None] = [None] * view_ndim
                for i, k in enumerate(spec):
                    kept, total = values[2 * i], values[2 * i + 1]
                    mode_energy[k] = kept / total if total > 0 else 1.0
                entry = {
                    "group": gi,
                    "index": pi,
                    "name": _param_name(group, pi, plain=True),
                    "shape": tuple(p.shape),
                    "view_shape": tuple(view),
                    "ranks": tuple(ranks),
                    "core_numel": int(state["exp_avg_sq"].numel()),
                    "step": int(state["step"]),
                    "last_refresh": int(state["last_refresh"]),
                    "refreshes": int(state["refreshes"]),
                    "energy": energy,
                    "overlap": None if overlap is None else tuple(overlap),
                    "mode_energy": tuple(mode_energy),
                    "nonfinite_skips": int(state["nonfinite_skips"]) if "nonfinite_skips" in state else 0,
                    "state_bytes": _bytes(state),
                }
                if spectra:
                    entry["spectra"] = [spec[k].tolist() if k in spec else None for k in range(view_ndim)]
                out.append(entry)
        return out

    def captured_energy_now(self) -> list[dict[str, Any]]:
        """How much of each projected parameter's *current* gradient its current subspace captures.

        ``||project(G)||^2 / ||G||^2`` with the stored factors (one projection per parameter, one host read in
        all), for a lazy refresh policy; call it while gradients exist (e.g. before :meth:`step`). Entries:
        ``group``, ``index``, ``energy``; parameters without factors or gradients are left out.
        """
        keys, energies = [], []
        for gi, group in enumerate(self.param_groups):
            if not group["galore"]:
                continue
            for pi, p in enumerate(group["params"]):
                state = self.state.get(p, {})
                layout = group_layout(p, group)
                if p.grad is None or layout is None or "step" not in state:
                    continue
                factors = _factors_from_state(state, layout)
                if factors is None:
                    continue
                g = p.grad.reshape(layout[0])
                keys.append((gi, pi))
                energies.append(tucker.captured_energy(tucker.project(g, factors), g))
        if not energies:
            return []
        device = energies[0].device
        values = torch.stack([e.to(device) for e in energies]).tolist()
        return [{"group": gi, "index": pi, "energy": e} for (gi, pi), e in zip(keys, values, strict=True)]

    @torch.no_grad()
    def gradient_spectra(self, group_idx: int | None = None) -> list[dict[str, Any]]:
        """Per-mode Gram eigenvalues of each projected parameter's *current* gradient, for rank selection.

        For every parameter of a ``galore`` group (one group, or all) that has a gradient and a projection
        layout: the eigenvalues of ``G_(k) G_(k)^H`` of the full gradient ``G`` in its layout view (plain HOSVD;
        the sum over a mode is ``||G||^2``, and ``||G||^2`` minus the eigenvalues a rank discards in each mode,
        summed over modes, is a lower bound on the energy the Tucker core then keeps). Read-only; no host read:
        the spectra stay on the gradient's device. Entries: ``group``, ``index``, ``view_shape``, ``ranks`` (the
        layout's current ranks, None for unprojected modes), ``spectra`` (per mode of the view: a float32
        ``(n_k,)`` tensor, decreasing, >= 0, or None for unprojected modes).
        """
        out = []
        for gi in range(len(self.param_groups)) if group_idx is None else [group_idx]:
            group = self._groups(gi)[0]
            if not group["galore"]:
                continue
            for pi, p in enumerate(group["params"]):
                layout = group_layout(p, group)
                if p.grad is None or layout is None:
                    continue
                view, ranks = layout
                g = p.grad.reshape(view).to(tucker.solve_dtype(p.grad.dtype))
                spectra = [
                    None
                    if r is None
                    else torch.linalg.eigvalsh(tucker.mode_gram(g, k)).flip(-1).clamp_min(0).to(torch.float32)
                    for k, r in enumerate(ranks)
                ]
                out.append({"group": gi, "index": pi, "view_shape": view, "ranks": ranks, "spectra": spectra})
        return out

    def state_bytes(self) -> dict[str, Any]:
        """Exact bytes of optimizer state tensors: ``{"total": int, "groups": [int per param group]}``.

        Compare with :func:`app.memory.adamw_state_bytes` (what ``torch.optim.AdamW`` would hold).
        """
        groups = optimizer_state_bytes(self, per_group=True)
        return {"total": sum(groups), "groups": groups}

    # -------------------------------------------------------------------------------- checkpointing

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like ``torch.optim.Optimizer`` but keep each state tensor's saved dtype.

        torch casts floating state to a real parameter's dtype and moves every entry to the parameter's device;
        this optimizer's state has fixed dtypes (real second moments, int64 counters, float32 diagnostics) and
        host-side counters, so each entry is restored from the saved value: host keys on the CPU, the rest on
        the parameter's device.
        """
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        saved_state = state_dict["state"]
        for pid, p in zip(saved_ids, params, strict=True):
            if pid in saved_state:
                self.state[p] = {
                    k: v.to(device="cpu" if k in _HOST_KEYS else p.device) if isinstance(v, Tensor) else v
                    for k, v in saved_state[pid].items()
                }

    # -------------------------------------------------------------------------------- step (mechanism)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step (``closure`` re-evaluates the model and returns the loss)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = [self._collect(gi, group) for gi, group in enumerate(self.param_groups)]
        if not self._finite_or_skip(work):
            return loss
        for group, items in zip(self.param_groups, work, strict=True):
            self._update_group(group, items)
            if items:  # a group none of whose parameters had a gradient (fused per-layer steps) still waits
                group["refresh_pending"] = False
        return loss

    def _collect(self, group_idx: int, group: dict[str, Any]) -> list[_Work]:
        """Find the parameters to update, decide refreshes and project gradients; changes no state values."""
        _check_options(group)
        items = []
        for pi, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("TensorGaLoreAdamW does not support sparse gradients")
            layout = group_layout(p, group)
            if layout is None:
                items.append(_Work(group_idx, pi, p, p.grad, None))
                continue
            item = _Work(group_idx, pi, p, p.grad.reshape(layout[0]), layout)
            state = self.state[p]
            _counters_to_host(state)
            factors = _factors_from_state(state, layout) if "step" in state else None
            gap = group["update_proj_gap"]
            item.refresh = (
                factors is None
                or group["refresh_pending"]
                or (gap is not None and int(state["step"]) - int(state["last_refresh"]) >= gap)
            )
            self._before_projection(item, state, group)
            if not item.refresh:
                item.core = tucker.project(item.grad, factors)
            items.append(item)
        return items

    def _before_projection(self, item: _Work, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Hook for subclasses, called in :meth:`_collect` for each projected parameter once ``item.refresh`` is
        decided and before ``item.grad`` is projected. It may replace ``item.grad`` by a new tensor (the low-rank
        part is then fitted to it) and keep per-step data in ``item.extra``; it must not change ``state`` or
        ``p.grad`` (the step may still be skipped). Does nothing here."""

    def _finite_or_skip(self, work: list[list[_Work]]) -> bool:
        """True if every gradient is finite. Else raise (``nonfinite="error"``) or count the skip and warn."""
        items = [it for group_items in work for it in group_items]
        if not items:
            return True
        device = items[0].grad.device
        flags = torch.isfinite(torch.stack([p.to(device) for p in _finiteness_probes(items)]))
        if bool(flags.all()):  # the one device-to-host read of a step
            return True
        bad = [items[i] for i in torch.nonzero(~flags.cpu()).flatten().tolist()]
        for it in bad:
            group = self.param_groups[it.group_idx]
            if group["nonfinite"] == "error":
                raise NonFiniteGradientError(
                    f"non-finite gradient for {self._describe(it)} at step {self._step_of(it.param)}; "
                    "fix the loss/learning rate, or pass nonfinite='skip' to skip such steps"
                )
        warnings.warn(
            f"TensorGaLoreAdamW skipped a step: non-finite gradient for {self._describe(bad[0])}"
            f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''} at step {self._step_of(bad[0].param)}; "
            "moments, factors and step counts are unchanged",
            RuntimeWarning,
            stacklevel=3,
        )
        for it in items:
            state = self.state[it.param]
            if "nonfinite_skips" not in state:
                state["nonfinite_skips"] = torch.zeros((), dtype=torch.int64)
            state["nonfinite_skips"] += 1
        return False

    def _step_of(self, p: Tensor) -> int:
        state = self.state.get(p, {})
        return int(state["step"]) if "step" in state else 0

    def _describe(self, it: _Work) -> str:
        group = self.param_groups[it.group_idx]
        return (
            f"param_groups[{it.group_idx}] {_param_name(group, it.param_idx)} "
            f"(shape {tuple(it.param.shape)}, {it.param.dtype})"
        )

    def _update_group(self, group: dict[str, Any], items: list[_Work]) -> None:
        params, grads, exp_avgs, exp_avg_sqs, factors, bias_steps = [], [], [], [], [], []
        residual_grads: list[Tensor | None] = []
        residual_norms: list[Tensor | None] = []
        reset = group["refresh_moments"] == "reset"
        residual = group["residual"] == "scaled"
        for it in items:
            p, state = it.param, self.state[it.param]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32)
            if it.layout is None:
                if "exp_avg" not in state or state["exp_avg"].shape != p.shape or _factor_keys(state):
                    self._init_dense(p, state)
                fs = None
            else:
                if it.refresh:
                    self._refresh(it, state, group)
                fs = _factors_from_state(state, it.layout)
            state["step"] += 1
            step = float(state["step"])  # host tensor: no device sync
            params.append(p)
            grads.append(it.grad if it.core is None else it.core)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            factors.append(fs)
            bias_steps.append(step - float(state["last_refresh"]) if (reset and fs is not None) else step)
            if residual and fs is not None:
                if "residual_norm" not in state:
                    state["residual_norm"] = torch.zeros((), dtype=_real_dtype(p.dtype), device=p.device)
                residual_grads.append(it.grad)
                residual_norms.append(state["residual_norm"])
            else:
                residual_grads.append(None)
                residual_norms.append(None)
        if params:
            beta1, beta2 = group["betas"]
            tensor_galore_adamw(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                factors,
                bias_steps,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                scale=group["scale"],
                complex_norm=group["complex_norm"],
                residual_grads=residual_grads if residual else None,
                residual_norms=residual_norms if residual else None,
                residual_limit=group["residual_limit"],
            )

    @staticmethod
    def _init_dense(p: Tensor, state: dict[str, Any]) -> None:
        for key in [k for k in state if k != "step" and k != "nonfinite_skips"]:
            del state[key]  # a parameter whose group switched from projected to full
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros(p.shape, dtype=_real_dtype(p.dtype), device=p.device)

    def _solve(self, g: Tensor, ranks, old: list[Tensor | None] | None, group: dict[str, Any]):
        solver = group["solver"]
        if solver == "hosvd":
            return tucker.hosvd(g, ranks)
        if solver == "tensorly":
            return tucker.tensorly_tucker(g, ranks, n_iter_max=group["solver_iters"])
        same_ranks = old is not None and all(
            (u is None and r is None) or (u is not None and r is not None and u.shape[1] == r)
            for u, r in zip(old, ranks, strict=True)
        )
        start = old if same_ranks else tucker.hosvd(g, ranks).factors
        return tucker.hooi(g, start, group["solver_iters"])

    def _refresh(self, it: _Work, state: dict[str, Any], group: dict[str, Any]) -> None:
        """New factors for ``it`` (or the old ones if the solver fails), moments carried over, core computed."""
        view, ranks = it.layout
        old = _factors_from_state(state, it.layout)
        s = int(state["step"])
        try:
            core, new, spectra = self._solve(it.grad, ranks, old, group)
            if not bool(torch.stack([torch.isfinite(u).all() for u in new if u is not None]).all()):  # 1 sync
                raise torch.linalg.LinAlgError("the solver returned non-finite factors")
        except torch.linalg.LinAlgError as err:
            fallback = "keeping the previous factors" if old is not None else "using coordinate subspaces"
            warnings.warn(
                f"TensorGaLoreAdamW: subspace solver {group['solver']!r} failed for {self._describe(it)} at step "
                f"{s} ({err}); {fallback} until the next refresh",
                RuntimeWarning,
                stacklevel=4,
            )
            new = (
                old
                if old is not None
                else [
                    None if r is None else torch.eye(n, r, dtype=it.grad.dtype, device=it.grad.device)
                    for n, r in zip(view, ranks, strict=True)
                ]
            )
            spectra, core = None, tucker.project(it.grad, new)
        core_shape = [n if u is None else u.shape[1] for n, u in zip(view, new, strict=True)]
        real = _real_dtype(it.param.dtype)
        old_core = None if old is None else [n if u is None else u.shape[1] for n, u in zip(view, old, strict=True)]
        if old is not None and "exp_avg" in state and list(state["exp_avg"].shape) == old_core:
            exp_avg, exp_avg_sq = _transfer_moments(
                state["exp_avg"], state["exp_avg_sq"], old, new, group["refresh_moments"]
            )
        else:
            exp_avg = torch.zeros(core_shape, dtype=it.param.dtype, device=it.param.device)
            exp_avg_sq = torch.zeros(core_shape, dtype=real, device=it.param.device)
        stale = ("factor_",) if spectra is None else ("factor_", "spectrum_")
        for key in [k for k in state if k.startswith(stale)]:
            del state[key]
        state["exp_avg"], state["exp_avg_sq"] = exp_avg, exp_avg_sq
        for k, u in enumerate(new):
            if u is not None:
                state[f"factor_{k}"] = u
        if spectra is not None:
            for k, sp in enumerate(spectra):
                if sp is not None:
                    state[f"spectrum_{k}"] = sp
        if old is not None:  # mean squared cosine of the principal angles between old and new subspaces
            state["overlap"] = torch.stack(
                [
                    torch.ones((), device=it.param.device)  # an unprojected mode spans the full space
                    if u is None
                    else tucker.norm_sq(u.mH @ v) / min(u.shape[1], v.shape[1])
                    for u, v in zip(new, old, strict=True)
                ]
            )
        it.core = core
        state["energy"] = tucker.captured_energy(core, it.grad, it.grad_norm_sq)
        state["last_refresh"] = torch.tensor(s, dtype=torch.int64)
        state["refreshes"] = state.get("refreshes", torch.zeros((), dtype=torch.int64)) + 1
        logger.debug("refreshed %s at step %d: core %s", self._describe(it), s, tuple(core_shape))


def _counters_to_host(state: dict[str, Any]) -> None:
    """Bring host-side counters back to the CPU if something moved them (Lightning's ``_optimizer_to_device``
    moves every state entry but ``step``); one copy after such a move, none otherwise."""
    for key in _HOST_KEYS:
        v = state.get(key)
        if v is not None and v.device.type != "cpu":
            state[key] = v.cpu()


def _param_name(group: dict[str, Any], idx: int, plain: bool = False) -> str | None:
    names = group.get("param_names")
    if plain:
        return names[idx] if names else None
    return f"params[{idx}]" + (f" ({names[idx]!r})" if names else "")


def _bytes(state: dict[str, Any]) -> int:
    return sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, Tensor))
