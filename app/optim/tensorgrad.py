"""TensorGRaD AdamW: Tensor-GaLore's low-rank Tucker part plus a sparse part, and an optional bfloat16 state.

TensorGRaD (Loeschcke et al., 2025, the follow-up to Tensor-GaLore by the same group) writes each gradient of a
projected parameter as ``G ~ L + S``: ``L`` the Tucker projection of :class:`~app.optim.tensor_galore.TensorGaLoreAdamW`
and ``S`` a sparse tensor that keeps a fraction of the entries, so that the large isolated entries a low-rank
subspace misses are still optimised. This module adds it as a
subclass that reuses every part of ``TensorGaLoreAdamW`` (subspaces, refreshes, low-rank Adam, checkpointing,
non-finite handling) and adds the sparse part around it:

1. **Composition** (``composition``): ``"lowrank_first"`` fits the Tucker subspace to ``G`` and takes the sparse
   part from the residual ``R = G - back(project(G))``; ``"sparse_first"`` takes the sparse part from ``G`` and
   fits the subspace to ``G - S`` (the order of the published code's main TensorGRaD scripts).
2. **Selection** (``sparse_type``), at each subspace refresh (the parameter's first step, every
   ``update_proj_gap`` steps, :meth:`request_refresh`): ``"topk"`` keeps the ``k`` entries of largest modulus,
   ``"randk"`` ``k`` uniformly random entries drawn from a seed mixed from ``(seed, step, parameter position)``
   with a private generator, so every DDP rank and every resumed run draws the same ones. ``k`` =
   ``sparse_ratio`` of the parameter's elements (:func:`sparse.sparse_count`). Between refreshes the positions
   stay and only the values are read from each new gradient.
3. **Adam twice**: the core gets Tensor-GaLore's moments; the sparse values (complex entries included) get their
   own moments, one entry per kept position (first moment in the parameter's dtype, second ``|g|^2`` real, the
   project's complex rule).
4. **Update**: ``W = (1 - lr * wd) W - lr * (scale * back(N_L) + sparse_scale * scatter(N_S))`` with ``N_L``,
   ``N_S`` the bias-corrected Adam directions. ``sparse_scale`` (default 1, the two parts on an equal footing)
   is the weight of the sparse part; the published code's ``lambda_sparse``.

What a refresh does to the sparse moments follows ``refresh_moments``: ``"reset"`` zeroes them (and the bias
correction restarts at the refresh, as for the core); ``"keep"`` and ``"project"`` carry the moments of the
positions kept in both selections over and start the new ones at zero (the exact "projection" for coordinate
subspaces). ``sparse_ratio`` and ``sparse_type`` take effect at the next refresh, the other options at the next
step.

**Lower-precision state** (``moment_dtype="bfloat16"``, not in the published code): every moment of the group
(core, sparse and full-tensor ones) is kept in bfloat16 between steps; complex moments as their real and
imaginary parts (a trailing dimension of 2), the real second moments as they are. During a step each
parameter's moments are decoded to the parameter's dtype (float32/complex64 for a float32/complex64 model), the
update is computed there exactly as with ``moment_dtype="param"``, and the new moments are rounded back
(``moment_rounding``: ``"stochastic"``, seeded like ``randk``, or ``"nearest"``). The decoded copies exist only
while their group is being stepped.

State added per projected parameter (plain tensors; ``torch.load(weights_only=True)`` works): ``sparse_index``
(``(k,)`` int32, or int64 for tensors of 2**31 or more elements: positions in the flattened parameter, sorted),
``sparse_exp_avg`` (``(k,)`` parameter dtype; bfloat16 ``(k, 2)`` for complex, ``(k,)`` for real),
``sparse_exp_avg_sq`` (``(k,)`` real), ``sparse_energy`` (0-d float32: ``||S||^2 / ||G||^2`` at the last
refresh). :func:`sparse_state_bytes` and :func:`moment_itemsizes` predict the bytes exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from . import sparse, tucker
from .tensor_galore import (
    TensorGaLoreAdamW,
    _check_choice,
    _check_real,
    _factors_from_state,
    _real_dtype,
    _Work,
)

__all__ = ["TensorGRaDAdamW", "moment_itemsizes", "sparse_state_bytes"]

_SPARSE_TYPES = ("topk", "randk")
_COMPOSITIONS = ("lowrank_first", "sparse_first")
_MOMENT_DTYPES = ("param", "bfloat16")
_ROUNDINGS = ("stochastic", "nearest")
_FIRST_MOMENTS = ("exp_avg", "sparse_exp_avg")  # complex for complex parameters
_SECOND_MOMENTS = ("exp_avg_sq", "sparse_exp_avg_sq")  # always real
_OPTION_KEYS = (
    "sparse_ratio",
    "sparse_type",
    "composition",
    "sparse_scale",
    "seed",
    "moment_dtype",
    "moment_rounding",
)
_SPARSE_KEYS = ("sparse_index", "sparse_exp_avg", "sparse_exp_avg_sq", "sparse_energy")
# salts of the two random streams, so the selection and the rounding of one step never share bits
_SALT_SELECT, _SALT_ROUND = 0x5E1EC7, 0x20D0


def _check_tensorgrad_options(group: dict[str, Any]) -> None:
    """Validate the TensorGRaD options of a param group (or of the defaults)."""
    ratio = group["sparse_ratio"]
    _check_real("sparse_ratio", ratio, 0.0, "0.05")
    if ratio > 1:
        raise ValueError(f"sparse_ratio={ratio!r} is invalid: use a fraction of the entries in [0, 1], e.g. 0.05")
    _check_choice("sparse_type", group["sparse_type"], _SPARSE_TYPES)
    _check_choice("composition", group["composition"], _COMPOSITIONS)
    _check_real("sparse_scale", group["sparse_scale"], 0.0, "1.0")
    seed = group["seed"]
    if not tucker._is_int(seed) or seed < 0:
        raise ValueError(f"seed={seed!r} is invalid: use an int >= 0, e.g. seed=0")
    _check_choice("moment_dtype", group["moment_dtype"], _MOMENT_DTYPES)
    _check_choice("moment_rounding", group["moment_rounding"], _ROUNDINGS)
    if group.get("residual", "none") != "none" and group["sparse_ratio"] > 0:
        raise ValueError(
            f"residual={group['residual']!r} with sparse_ratio={ratio!r}: the sparse part and the residual step "
            "both apply the gradient outside the subspace; use residual='none' or sparse_ratio=0"
        )


def moment_itemsizes(dtype: torch.dtype, group: dict[str, Any]) -> tuple[int, int]:
    """Bytes per element of the first and second moments of a parameter of ``dtype`` in ``group`` (a
    ``TensorGaLoreAdamW`` group stores ``(dtype, real dtype)``; ``moment_dtype="bfloat16"`` 2 bytes per real
    number: ``(4, 2)`` for complex, ``(2, 2)`` for real)."""
    if group.get("moment_dtype", "param") == "bfloat16":
        return (4 if dtype.is_complex else 2), 2
    return torch.empty((), dtype=dtype).element_size(), torch.empty((), dtype=_real_dtype(dtype)).element_size()


def sparse_state_bytes(numel: int, dtype: torch.dtype, group: dict[str, Any]) -> int:
    """Bytes of the sparse state of a *projected* parameter with ``numel`` elements of ``dtype`` in ``group``
    once it has stepped: ``k`` indices, ``k`` entries of each moment and the 4-byte ``sparse_energy`` (0 for
    groups without a sparse part)."""
    k = sparse.sparse_count(group.get("sparse_ratio", 0.0), numel)
    if k == 0:
        return 0
    first, second = moment_itemsizes(dtype, group)
    index = torch.empty((), dtype=sparse.index_dtype(numel)).element_size()
    return k * (first + second + index) + 4


class TensorGRaDAdamW(TensorGaLoreAdamW):
    """Tensor-GaLore AdamW plus a sparse part of each projected gradient (TensorGRaD), optional bfloat16 moments.

    Every option of :class:`TensorGaLoreAdamW` works as there (see its documentation); the default ``rank`` here
    is 0.2, so that with ``sparse_ratio=0.05`` the two parts together see 25% of each gradient's entries. The
    sparse part applies to the parameters that Tensor-GaLore projects (``galore=True`` groups, 2 or more
    dimensions); other parameters get full-tensor AdamW. ``sparse_ratio=0`` gives Tensor-GaLore itself.

    Args:
        params, lr, betas, eps, weight_decay, galore, rank, update_proj_gap, scale, proj, proj_modes, rollup, solver,
            solver_iters, refresh_moments, nonfinite, complex_norm, residual, residual_limit: as in
            :class:`TensorGaLoreAdamW` (``residual="scaled"`` needs ``sparse_ratio=0``)
            (``refresh_moments`` also decides what a refresh does to the sparse moments: zeroed, or carried over
            for kept positions).
        sparse_ratio: fraction of each projected parameter's entries in the sparse part, in [0, 1]; ``k =
            clamp(round(sparse_ratio * numel), 1, numel)`` entries (none for 0).
        sparse_type: ``"topk"``: the entries of largest modulus of the tensor the sparse part is taken from;
            ``"randk"``: uniformly random entries, drawn from ``(seed, step, position of the parameter in the
            optimizer's flattened parameter list)`` only, so DDP ranks and resumed runs agree.
        composition: ``"lowrank_first"``: subspace fitted to ``G``, sparse part from the residual
            ``G - back(project(G))``; ``"sparse_first"``: sparse part from ``G``, subspace fitted to ``G - S``.
        sparse_scale: weight of the sparse part's update relative to the low-rank one (the update is
            ``scale * low-rank + sparse_scale * sparse``), >= 0.
        seed: seed of ``randk`` selections and of stochastic rounding (int >= 0).
        moment_dtype: ``"param"``: moments in the parameter's dtype (second moments in its real dtype), as in
            ``TensorGaLoreAdamW``; ``"bfloat16"``: all moments of the group stored in bfloat16 (complex ones as
            real and imaginary parts) and decoded for the update, which is computed in the parameter's dtype.
            bfloat16 halves the state again at the cost of an encode/decode per step; float32 stays the default
            (BENCHMARKS.md, TensorGRaD section, has the accuracy and step time of both).
        moment_rounding: how moments are rounded to bfloat16: ``"stochastic"`` (unbiased; keeps slow averages
            such as ``beta2=0.999`` moving) or ``"nearest"`` (round to nearest-even).

    Example::

        opt = TensorGRaDAdamW(split_param_groups(model), lr=5e-3, rank=0.2, sparse_ratio=0.05)
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
        rank: int | float | Sequence[int | float | None] = 0.2,
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
        sparse_ratio: float = 0.05,
        sparse_type: Literal["topk", "randk"] = "topk",
        composition: Literal["lowrank_first", "sparse_first"] = "lowrank_first",
        sparse_scale: float = 1.0,
        seed: int = 0,
        moment_dtype: Literal["param", "bfloat16"] = "param",
        moment_rounding: Literal["stochastic", "nearest"] = "stochastic",
    ) -> None:
        options = dict(
            sparse_ratio=sparse_ratio,
            sparse_type=sparse_type,
            composition=composition,
            sparse_scale=sparse_scale,
            seed=seed,
            moment_dtype=moment_dtype,
            moment_rounding=moment_rounding,
        )
        _check_tensorgrad_options(options)
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            galore=galore,
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            proj=proj,
            proj_modes=proj_modes,
            rollup=rollup,
            solver=solver,
            solver_iters=solver_iters,
            refresh_moments=refresh_moments,
            nonfinite=nonfinite,
            complex_norm=complex_norm,
            residual=residual,
            residual_limit=residual_limit,
        )
        # The base constructor adds the initial groups before these options are defaults; fill and check them now
        # (groups added later are filled from ``defaults`` and checked by ``add_param_group``).
        self.defaults.update(options)
        for i, group in enumerate(self.param_groups):
            for key, value in options.items():
                group.setdefault(key, value)
            self._check_group(group, i)

    @staticmethod
    def _check_group(group: dict[str, Any], group_idx: int, rank: object = None) -> None:
        TensorGaLoreAdamW._check_group(group, group_idx, rank)
        if not all(key in group for key in _OPTION_KEYS):  # the base constructor adding the initial groups
            return
        try:
            _check_tensorgrad_options(group)
        except (TypeError, ValueError) as err:
            raise type(err)(f"param_groups[{group_idx}]: {err}") from None

    # -------------------------------------------------------------------------------- diagnostics

    def subspace_stats(self, spectra: bool = False) -> list[dict[str, Any]]:
        """:meth:`TensorGaLoreAdamW.subspace_stats` plus, per entry, ``sparse_numel`` (kept entries, 0 without a
        sparse part) and ``sparse_energy`` (``||S||^2 / ||G||^2`` at the last refresh, or None)."""
        out = super().subspace_stats(spectra)
        for entry in out:
            state = self.state[self.param_groups[entry["group"]]["params"][entry["index"]]]
            has = "sparse_index" in state
            entry["sparse_numel"] = int(state["sparse_index"].numel()) if has else 0
            entry["sparse_energy"] = float(state["sparse_energy"]) if has else None
        return out

    # -------------------------------------------------------------------------------- step

    def _collect(self, group_idx: int, group: dict[str, Any]) -> list[_Work]:
        _check_tensorgrad_options(group)
        return super()._collect(group_idx, group)

    def _position(self, group_idx: int, param_idx: int) -> int:
        """The parameter's position in the optimizer's parameter list, all groups flattened (the same on every
        rank that builds the same groups)."""
        return sum(len(g["params"]) for g in self.param_groups[:group_idx]) + param_idx

    def _select(self, x: Tensor, k: int, group: dict[str, Any], position: int, step_idx: int) -> Tensor:
        if group["sparse_type"] == "topk":
            return sparse.topk_indices(x, k)
        seed = sparse.mix_seed(group["seed"], step_idx, position, _SALT_SELECT)
        return sparse.randk_indices(x.numel(), k, seed, x.device)

    def _before_projection(self, item: _Work, state: dict[str, Any], group: dict[str, Any]) -> None:
        """``composition="sparse_first"``: take the sparse part from ``G`` and leave ``G - S`` to the subspace."""
        if group["composition"] != "sparse_first":
            return
        if item.refresh:
            k = sparse.sparse_count(group["sparse_ratio"], item.param.numel())
            if k == 0:
                return
            step_idx = int(state["step"]) if "step" in state else 0
            index = self._select(item.grad, k, group, self._position(item.group_idx, item.param_idx), step_idx)
        elif "sparse_index" in state:
            index = state["sparse_index"]
        else:
            return
        values = sparse.gather(item.grad, index)
        residual = item.grad.clone(memory_format=torch.contiguous_format)  # a new tensor: p.grad is untouched
        residual.view(-1).index_add_(0, index, values, alpha=-1)  # G - S (inf/nan in S propagate to it)
        item.extra.update(sparse_index=index, sparse_values=values, sparse_grad_norm_sq=tucker.norm_sq(item.grad))
        item.grad = residual

    def _sparse_part(self, it: _Work, state: dict[str, Any], group: dict[str, Any]) -> tuple[Tensor, Tensor] | None:
        """``(index, values)`` of this step's sparse part (after the low-rank update of ``it``), or None."""
        if "sparse_index" in it.extra:  # sparse_first: chosen in _collect
            return it.extra["sparse_index"], it.extra["sparse_values"]
        if group["composition"] != "lowrank_first" or not (it.refresh or "sparse_index" in state):
            return None
        k = sparse.sparse_count(group["sparse_ratio"], it.param.numel())
        if it.refresh and k == 0:
            return None
        factors = _factors_from_state(state, it.layout)
        if not it.refresh:  # the residual at the kept positions only
            index = state["sparse_index"]
            return index, sparse.gather(it.grad, index) - sparse.gather_project_back(it.core, factors, index)
        residual = it.grad - tucker.project_back(it.core, factors)
        step_idx = int(state["step"]) - 1
        index = self._select(residual, k, group, self._position(it.group_idx, it.param_idx), step_idx)
        return index, sparse.gather(residual, index)

    def _update_group(self, group: dict[str, Any], items: list[_Work]) -> None:
        for it in items:
            _decode_moments(it.param, self.state[it.param])
        super()._update_group(group, items)  # refreshes, the low-rank (or full-tensor) Adam update, decay
        self._update_sparse(group, items)
        if group["moment_dtype"] == "bfloat16":
            for it in items:
                self._encode_moments(it, self.state[it.param], group)

    def _update_sparse(self, group: dict[str, Any], items: list[_Work]) -> None:
        params, values, indices, exp_avgs, exp_avg_sqs, bias_steps = [], [], [], [], [], []
        reset = group["refresh_moments"] == "reset"
        for it in items:
            state = self.state[it.param]
            if it.layout is None:
                continue
            part = self._sparse_part(it, state, group)
            if it.refresh:
                if part is None:
                    for key in [k for k in _SPARSE_KEYS if k in state]:
                        del state[key]
                    continue
                self._refresh_sparse(it, state, part, reset)
            elif part is None:
                continue
            index, vals = part
            params.append(it.param)
            values.append(vals)
            indices.append(index)
            exp_avgs.append(state["sparse_exp_avg"])
            exp_avg_sqs.append(state["sparse_exp_avg_sq"])
            step = float(state["step"])
            bias_steps.append(step - float(state["last_refresh"]) if reset else step)
        if params:
            beta1, beta2 = group["betas"]
            sparse.sparse_adamw(
                params,
                values,
                indices,
                exp_avgs,
                exp_avg_sqs,
                bias_steps,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                scale=group["sparse_scale"],
                complex_norm=group["complex_norm"],
            )

    @staticmethod
    def _refresh_sparse(it: _Work, state: dict[str, Any], part: tuple[Tensor, Tensor], reset: bool) -> None:
        """New positions: moments zeroed or carried over, ``sparse_energy`` recorded (no host sync)."""
        index, values = part
        p = it.param
        if "sparse_index" in state and "sparse_exp_avg" in state and not reset:
            old = state["sparse_index"]
            exp_avg = sparse.carry_over(state["sparse_exp_avg"], old, index)
            exp_avg_sq = sparse.carry_over(state["sparse_exp_avg_sq"], old, index)
        else:
            exp_avg = torch.zeros(index.numel(), dtype=p.dtype, device=p.device)
            exp_avg_sq = torch.zeros(index.numel(), dtype=_real_dtype(p.dtype), device=p.device)
        total = it.extra.get("sparse_grad_norm_sq")  # sparse_first: ||G||^2 (it.grad is G - S there)
        if total is None:
            total = it.grad_norm_sq if it.grad_norm_sq is not None else tucker.norm_sq(it.grad)
        state["sparse_index"] = index
        state["sparse_exp_avg"], state["sparse_exp_avg_sq"] = exp_avg, exp_avg_sq
        state["sparse_energy"] = tucker.captured_energy(values, values, total.to(values.device))

    def _encode_moments(self, it: _Work, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Round every moment of ``it``'s parameter to bfloat16 (after the step's update)."""
        p = it.param
        gen = None
        if group["moment_rounding"] == "stochastic":
            step_idx = int(state["step"]) - 1
            seed = sparse.mix_seed(group["seed"], step_idx, self._position(it.group_idx, it.param_idx), _SALT_ROUND)
            gen = torch.Generator(device=p.device).manual_seed(seed)
        for key in _FIRST_MOMENTS + _SECOND_MOMENTS:
            v = state.get(key)
            if v is not None and v.dtype != torch.bfloat16:
                state[key] = sparse.to_bfloat16(v, gen)


def _decode_moments(p: Tensor, state: dict[str, Any]) -> None:
    """Bring bfloat16-stored moments back to the parameter's dtypes (before a step's update)."""
    for key in _FIRST_MOMENTS + _SECOND_MOMENTS:
        v = state.get(key)
        if v is None or v.dtype != torch.bfloat16:
            continue
        dtype = p.dtype if key in _FIRST_MOMENTS else _real_dtype(p.dtype)
        if dtype != torch.bfloat16:
            state[key] = sparse.from_bfloat16(v, dtype)
