"""The functional kernels of ``app.optim``: Adam updates on tensor lists, no optimizer object, no state dicts.

Like ``torch.optim.adamw.adamw``, each kernel takes per-parameter lists (parameters, gradients, moments, bias
steps) and the group's hyperparameters (:class:`AdamHyper`), and updates parameters and moments in place. The
optimizer (:mod:`app.optim.tensor_galore`) does the bookkeeping around them.

Conventions: the second moment of a complex entry is one real ``|g|^2`` (:func:`tucker.abs_sq`), its divisor is
:func:`tucker.rms_divisor`; the real full-tensor case performs exactly ``torch.optim.AdamW``'s operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from . import sparse, tucker

__all__ = ["AdamHyper", "tensor_galore_adamw", "sparse_adamw"]


class AdamHyper(NamedTuple):
    """A param group's Adam hyperparameters, read once per group and step."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    complex_norm: str = "element"

    @classmethod
    def of(cls, group) -> AdamHyper:
        beta1, beta2 = group["betas"]
        return cls(group["lr"], beta1, beta2, group["eps"], group["weight_decay"], group["complex_norm"])


def _ema_abs_sq_(v: Tensor, g: Tensor, beta2: float, fused_real: bool = True) -> None:
    """``v = beta2 * v + (1 - beta2) * |g|^2`` in place (real ``v``); for real ``g`` with ``fused_real`` the
    ``addcmul_`` of torch.optim.AdamW."""
    if g.is_complex() or not fused_real:
        v.mul_(beta2).add_(tucker.abs_sq(g), alpha=1 - beta2)
    else:
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)


def _adam_moments_(m: Tensor, v: Tensor, g: Tensor, step: float, hp: AdamHyper, fused_real: bool = True):
    """Update the moments ``m``, ``v`` with gradient ``g`` in place; return Adam's denominator
    ``sqrt(V_hat / c) + eps`` (a new tensor) and the first bias correction ``1 - beta1^step``."""
    m.lerp_(g, 1 - hp.beta1)
    _ema_abs_sq_(v, g, hp.beta2, fused_real)
    bias_correction1 = 1 - hp.beta1**step
    bias_correction2 = 1 - hp.beta2**step
    c = tucker.rms_divisor(g.is_complex(), hp.complex_norm)
    return (v.sqrt() / (bias_correction2 * c) ** 0.5).add_(hp.eps), bias_correction1  # c = 1: x * 1.0 is exact


def tensor_galore_adamw(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    factors: list[Sequence[Tensor | None] | None],
    bias_steps: list[float],
    *,
    hyper: AdamHyper,
    scales: list[float],
    residual_grads: list[Tensor | None] | None = None,
    residual_norms: list[Tensor | None] | None = None,
    residual_limit: float | None = None,
) -> None:
    """One AdamW update per parameter, in a projected space where ``factors[i]`` is given.

    ``grads[i]`` is the projected gradient (the core, shaped like the moments) when ``factors[i]`` is a factor
    list (the parameter's layout view has ``len(factors[i])`` modes), else the full gradient. ``bias_steps[i]``
    is the ``t`` of the bias corrections. Updates ``params``, ``exp_avgs`` and ``exp_avg_sqs`` in place; the
    update of a projected parameter is multiplied by ``scales[i]``. Full-tensor updates use exactly the operations
    of ``torch.optim.AdamW``'s single-tensor path (so real parameters get the same bits); full-tensor real
    parameters are updated together with ``torch._foreach_*`` ops (one call per operation instead of one per
    parameter: the same elementwise kernels, so the same bits, with less Python overhead).

    Residual step (``residual="scaled"`` in :class:`~app.optim.TensorGaLoreAdamW`): where ``residual_grads[i]``
    is the full gradient ``G`` (in the layout view) of a projected parameter, the part of ``G`` outside the
    subspace, ``G - back(core)``, is added to the update with the norm ratio ``phi = ||D|| / ||core||`` of this
    step's Adam direction ``D`` (``M_hat / (sqrt(V_hat) + eps)`` in the core) to the core gradient, capped by
    ``residual_limit`` against ``residual_norms[i]`` (the last step's residual-update norm, a 0-d tensor of the
    parameter's real dtype updated in place; 0 means no cap).
    """
    lr, weight_decay = hyper.lr, hyper.weight_decay
    dense: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, fs in enumerate(factors):
        if fs is None and not params[i].is_complex():
            dense.setdefault((params[i].device, params[i].dtype), []).append(i)
    for idx in dense.values():
        lists = ([lst[i] for i in idx] for lst in (params, grads, exp_avgs, exp_avg_sqs, bias_steps))
        _dense_adamw_foreach(*lists, hp=hyper)
    done = {i for idx in dense.values() for i in idx}
    for i, param in enumerate(params):
        if i in done:
            continue
        grad, fs = grads[i], factors[i]
        if weight_decay != 0 and fs is None:
            param.mul_(1 - lr * weight_decay)
        denom, bias_correction1 = _adam_moments_(exp_avgs[i], exp_avg_sqs[i], grad, bias_steps[i], hyper)
        step_size = lr / bias_correction1
        if fs is None:
            param.addcdiv_(exp_avgs[i], denom, value=-step_size)
            continue
        direction = exp_avgs[i] / denom
        view = [direction.shape[k] if u is None else u.shape[0] for k, u in enumerate(fs)]
        decay = 1 - lr * weight_decay
        full = None if residual_grads is None else residual_grads[i]
        scale = scales[i]
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


def _dense_adamw_foreach(params, grads, exp_avgs, exp_avg_sqs, bias_steps, *, hp: AdamHyper) -> None:
    """AdamW on full real tensors of one device and dtype: the single-tensor path's operations, as foreach ops."""
    if hp.weight_decay != 0:
        torch._foreach_mul_(params, 1 - hp.lr * hp.weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - hp.beta1)
    torch._foreach_mul_(exp_avg_sqs, hp.beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - hp.beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, [(1 - hp.beta2**t) ** 0.5 for t in bias_steps])
    torch._foreach_add_(denoms, hp.eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, [-(hp.lr / (1 - hp.beta1**t)) for t in bias_steps])


def sparse_adamw(
    params: list[Tensor],
    values: list[Tensor],
    indices: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    bias_steps: list[float],
    *,
    hyper: AdamHyper,
    scale: float,
) -> None:
    """Adam on sparse parts: ``param.flat[index] -= lr * scale * M_hat / (sqrt(V_hat) + eps)``, in place.

    ``values[i]`` are the gradient's sparse entries at ``indices[i]``; ``exp_avgs[i]`` (dtype of the values) and
    ``exp_avg_sqs[i]`` (real, ``|g|^2``) are the moments of those entries, updated in place with the bias
    corrections of step ``bias_steps[i]``. No weight decay (the caller applies it once to the whole parameter).
    """
    for param, g, index, m, v, step in zip(params, values, indices, exp_avgs, exp_avg_sqs, bias_steps, strict=True):
        denom, bias_correction1 = _adam_moments_(m, v, g, step, hyper, fused_real=False)
        update = m / denom
        alpha = -hyper.lr * scale / bias_correction1
        if param.is_contiguous():
            param.view(-1).index_add_(0, index, update, alpha=alpha)
        else:
            param.add_(sparse.scatter(update, index, param.shape), alpha=alpha)
