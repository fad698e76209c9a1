"""Tensor-GaLore AdamW: Tucker-projected, complex-correct Adam with checkpointable, plain-tensor state, and its
options: a sparse part (TensorGRaD), bfloat16 moments, a residual step.

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

**Sparse part** (``sparse_ratio > 0``; TensorGRaD, Loeschcke et al., 2025, the follow-up to Tensor-GaLore by the
same group): each projected gradient is written as ``G ~ L + S``, ``L`` the Tucker projection and ``S`` a sparse
tensor that keeps a fraction of the entries, so that the large isolated entries a low-rank subspace misses are
still optimised.

1. *Composition* (``composition``): ``"lowrank_first"`` fits the subspace to ``G`` and takes the sparse part from
   the residual ``G - back(project(G))``; ``"sparse_first"`` takes it from ``G`` and fits the subspace to ``G - S``.
2. *Selection* (``sparse_type``), at each subspace refresh: ``"topk"`` keeps the ``k`` entries of largest modulus,
   ``"randk"`` ``k`` uniformly random entries drawn from a seed mixed from ``(seed, step, parameter position)``
   with a private generator, so every DDP rank and every resumed run draws the same ones;
   ``k = sparse.sparse_count(sparse_ratio, numel)``. Between refreshes the positions stay and only the values are
   read from each new gradient.
3. *Adam twice*: the core gets the moments above; the sparse values get their own, one entry per kept position.
4. *Update*: ``W = (1 - lr * wd) W - lr * (scale * back(N_L) + sparse_scale * scatter(N_S))``.

What a refresh does to the sparse moments follows ``refresh_moments``: ``"reset"`` zeroes them (the bias
correction restarts at the refresh, as for the core); ``"keep"`` and ``"project"`` carry the moments of the
positions kept in both selections over and start the new ones at zero.

**Lower-precision state** (``moment_dtype="bfloat16"``): every moment of the group is kept in bfloat16 between
steps (complex ones as real and imaginary parts). During a step each parameter's moments are decoded to the
parameter's dtype, the update is computed there exactly as with ``moment_dtype="param"``, and the new moments are
rounded back (``moment_rounding``: ``"stochastic"``, seeded like ``randk``, or ``"nearest"``).

The state's keys, shapes and dtypes are described once, in :mod:`app.optim.schema`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import diagnostics, sparse, tucker
from .checks import is_int
from .kernels import AdamHyper, sparse_adamw, tensor_galore_adamw
from .layout import Layout, RankSpec, group_layout, kept_fraction
from .options import check_group, check_options, param_label
from .refresh import refresh_subspace
from .schema import (
    FIRST_MOMENTS,
    HOST_KEYS,
    SECOND_MOMENTS,
    SPARSE_KEYS,
    factor_keys,
    factors_from_state,
    real_dtype,
    tensor_state_bytes,
)

__all__ = ["TensorGaLoreAdamW", "NonFiniteGradientError", "decode_moments"]

# salts of the two random streams, so the selection and the rounding of one step never share bits
_SALT_SELECT, _SALT_ROUND = 0x5E1EC7, 0x20D0
# options added after the first release, with the value that reproduces a state dict saved before them
_LEGACY = dict(
    refresh_pending=False,
    layout_modes=None,
    complex_norm="element",
    proj_modes=None,
    residual="none",
    residual_limit=1.01,
    sparse_ratio=0.0,
    sparse_type="topk",
    composition="lowrank_first",
    sparse_scale=1.0,
    seed=0,
    moment_dtype="param",
    moment_rounding="stochastic",
)


class NonFiniteGradientError(FloatingPointError):
    """A parameter's gradient contains inf or nan and its group has ``nonfinite="error"``."""


@dataclass
class _Work:
    """One parameter's share of a step, built before any state changes (never stored)."""

    group_idx: int
    param_idx: int
    param: Tensor
    grad: Tensor  # full gradient in the layout view (G - S for composition="sparse_first")
    layout: Layout | None
    refresh: bool = False
    core: Tensor | None = None
    grad_norm_sq: Tensor | None = None  # ||G||^2 at refresh steps (reused for the captured energy)
    sparse_index: Tensor | None = None  # sparse_first: this step's sparse part of G, chosen before projection
    sparse_values: Tensor | None = None
    sparse_total: Tensor | None = None  # sparse_first: ||G||^2 (``grad`` is G - S there)

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


def decode_moments(p: Tensor, state: dict[str, Any]) -> None:
    """Bring bfloat16-stored moments back to the parameter's dtypes (before a step's update)."""
    for key in FIRST_MOMENTS + SECOND_MOMENTS:
        v = state.get(key)
        if v is None or v.dtype != torch.bfloat16:
            continue
        dtype = p.dtype if key in FIRST_MOMENTS else real_dtype(p.dtype)
        if dtype != torch.bfloat16:
            state[key] = sparse.from_bfloat16(v, dtype)


def _counters_to_host(state: dict[str, Any]) -> None:
    """Bring host-side counters back to the CPU if something moved them (Lightning's ``_optimizer_to_device``
    moves every state entry but ``step``); one copy after such a move, none otherwise."""
    for key in HOST_KEYS:
        v = state.get(key)
        if v is not None and v.device.type != "cpu":
            state[key] = v.cpu()


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
            None refreshes only at the first step and on ``request_refresh()``. Default 50, the best cadence of
            the defaults study (BENCHMARKS.md, "Tensor-GaLore defaults"; GaLore's 200 trained worse).
        scale: factor applied to the back-projected update of projected parameters (GaLore's ``scale``), > 0, or
            ``"auto"`` (default): ``1 / sqrt(f)`` with ``f`` the fraction of the parameter's elements its core
            keeps (e.g. 2.0 at 25%), computed per parameter from its actual ranks. A rank-``f`` update has about
            ``sqrt(f)`` of a full update's size; ``"auto"`` gives it AdamW's size again.
        proj: ``"tucker"``: Tensor-GaLore, one factor per mode (``G x_k U_k^H``); ``"matrix"``: the GaLore
            baseline, a one-sided projection of the matrix view with ``rollup`` leading modes as rows.
            2-D parameters always use the matrix projection.
        proj_modes: the modes the Tucker path projects (mode indices, negative ones from the end), None for
            every mode, or ``"auto"`` (default): the group's ``layout_modes`` (set by the code that knows the
            weight's layout: ``app.param_groups.split_param_groups`` gives FNO spectral weights their channel
            modes ``(0, 1)``), else every mode. An explicit value (here or in the group) always wins. The other
            modes are kept whole and unrotated (no factor, no mode product), and a float
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
            back-projection). Not with the sparse part (``sparse_ratio > 0``, which takes entries of the same
            residual).
        residual_limit: Fira's norm-growth limiter for ``residual="scaled"``: the residual update's norm may grow
            by at most this factor per step (> 1; None: no limit); it stops a sudden large residual (e.g. a loss
            spike) from moving the weights by more than Adam's own step would.

        sparse_ratio: fraction of each projected parameter's entries in the sparse part (TensorGRaD), in [0, 1];
            ``k = clamp(round(sparse_ratio * numel), 1, numel)`` entries; 0 (default): no sparse part.
            ``sparse_ratio`` and ``sparse_type`` take effect at the next refresh, the other options at the next step.
        sparse_type: ``"topk"``: the entries of largest modulus of the tensor the sparse part is taken from;
            ``"randk"``: uniformly random entries, drawn from ``(seed, step, position of the parameter in the
            optimizer's flattened parameter list)`` only, so DDP ranks and resumed runs agree.
        composition: ``"lowrank_first"``: subspace fitted to ``G``, sparse part from the residual
            ``G - back(project(G))``; ``"sparse_first"``: sparse part from ``G``, subspace fitted to ``G - S``.
        sparse_scale: weight of the sparse part's update relative to the low-rank one (the update is
            ``scale * low-rank + sparse_scale * sparse``), >= 0 (the published code's ``lambda_sparse``).
        seed: seed of ``randk`` selections and of stochastic rounding (int >= 0).
        moment_dtype: ``"param"``: moments in the parameter's dtype (second moments in its real dtype);
            ``"bfloat16"``: every moment of the group (core, sparse and full-tensor ones) stored in bfloat16
            (complex ones as real and imaginary parts) and decoded for the update, which is computed in the
            parameter's dtype. It halves the state again at the cost of an encode/decode per step (figures:
            BENCHMARKS.md, tensorgrad section).
        moment_rounding: how moments are rounded to bfloat16: ``"stochastic"`` (unbiased; keeps slow averages
            such as ``beta2=0.999`` moving) or ``"nearest"`` (round to nearest-even).

    Group keys written by the control methods (also in ``defaults``): ``refresh_pending`` (bool). Written by the
    code that builds the groups: ``layout_modes`` (default None: layout unknown), read by ``proj_modes="auto"``.
    Not persisted: which groups have a refresh policy attached (:meth:`attach_policy`); while one is,
    ``update_proj_gap`` is not applied to the group and its subspaces refresh on request only.

    :class:`~app.optim.TensorGRaDAdamW` is this class with TensorGRaD's defaults (``rank=0.2``,
    ``sparse_ratio=0.05``).

    Example::

        opt = TensorGaLoreAdamW(
            [{"params": spectral_weights, "galore": True}, {"params": others}], lr=1e-3, rank=0.25)
        opt = TensorGaLoreAdamW(split_param_groups(model), rank=0.25, moment_dtype="bfloat16")  # bf16 moments
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
        update_proj_gap: int | None = 50,
        scale: float | Literal["auto"] = "auto",
        proj: Literal["tucker", "matrix"] = "tucker",
        proj_modes: Sequence[int] | Literal["auto"] | None = "auto",
        rollup: int = 1,
        solver: Literal["hosvd", "hooi", "tensorly"] = "hosvd",
        solver_iters: int = 1,
        refresh_moments: Literal["keep", "project", "reset"] = "reset",
        nonfinite: Literal["error", "skip"] = "error",
        complex_norm: Literal["element", "component"] = "component",
        residual: Literal["none", "scaled"] = "none",
        residual_limit: float | None = 1.01,
        sparse_ratio: float = 0.0,
        sparse_type: Literal["topk", "randk"] = "topk",
        composition: Literal["lowrank_first", "sparse_first"] = "lowrank_first",
        sparse_scale: float = 1.0,
        seed: int = 0,
        moment_dtype: Literal["param", "bfloat16"] = "param",
        moment_rounding: Literal["stochastic", "nearest"] = "stochastic",
    ) -> None:
        # every argument but the parameters is a group option (``locals()`` first, before any other name exists)
        defaults = {k: v for k, v in locals().items() if k not in ("self", "params", "__class__")}
        if isinstance(betas, list):
            defaults["betas"] = tuple(betas)
        if isinstance(proj_modes, list):
            defaults["proj_modes"] = tuple(proj_modes)
        defaults.update(refresh_pending=False, layout_modes=None)
        check_options(defaults)
        self._policy_groups: set[int] = set()
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_policy_groups", set())
        for i, group in enumerate(self.param_groups):  # options added after the first release
            for key, value in _LEGACY.items():
                group.setdefault(key, value)
            check_group(group, i)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (filled from ``defaults``) after validating its options and its parameters' ranks."""
        super().add_param_group(param_group)
        try:
            check_group(self.param_groups[-1], len(self.param_groups) - 1)
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    # -------------------------------------------------------------------------------- control (policy side)

    def _group_indices(self, group_idx: int | None) -> list[int]:
        if group_idx is None:
            return list(range(len(self.param_groups)))
        if not is_int(group_idx) or not 0 <= group_idx < len(self.param_groups):
            raise ValueError(
                f"group_idx={group_idx!r} is invalid: use None (all groups) or an int in "
                f"[0, {len(self.param_groups) - 1}]"
            )
        return [int(group_idx)]

    def request_refresh(self, group_idx: int | None = None) -> None:
        """Refresh the subspaces of the projected parameters of one group (or all) at the next :meth:`step`.

        Sets ``group["refresh_pending"] = True``; the next step that is not skipped refreshes and clears it.
        The automatic cadence restarts from that refresh.
        """
        for gi in self._group_indices(group_idx):
            self.param_groups[gi]["refresh_pending"] = True

    def set_rank(self, rank: RankSpec, group_idx: int | None = None) -> None:
        """Set ``group["rank"]`` of one group (or all); it applies at each parameter's next refresh.

        The spec is validated against every projected parameter first; nothing changes if it is invalid.
        Moments are carried into the new shape by ``refresh_moments``.
        """
        indices = self._group_indices(group_idx)
        for gi in indices:
            check_group(self.param_groups[gi], gi, rank=rank)
        for gi in indices:
            self.param_groups[gi]["rank"] = rank

    def attach_policy(self, group_idx: int | None = None) -> None:
        """Hand the refresh cadence of one group (or all) to an outside policy: until :meth:`detach_policy`,
        the group's ``update_proj_gap`` is not applied and its subspaces refresh only at a parameter's first step
        and on :meth:`request_refresh`. Not saved in ``state_dict()``: an optimizer restored without the policy
        refreshes at its own ``update_proj_gap`` again, counted from each parameter's last refresh."""
        self._policy_groups.update(self._group_indices(group_idx))

    def detach_policy(self, group_idx: int | None = None) -> None:
        """Give one group (or all) its own cadence (``update_proj_gap``) back."""
        self._policy_groups.difference_update(self._group_indices(group_idx))

    def policy_attached(self, group_idx: int) -> bool:
        """Whether an outside policy owns group ``group_idx``'s refresh cadence (see :meth:`attach_policy`)."""
        return self._group_indices(group_idx)[0] in self._policy_groups

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
        drift; None before a second refresh), ``nonfinite_skips``, ``state_bytes``, ``sparse_numel`` (kept
        entries of the sparse part, 0 without one), ``sparse_energy`` (``||S||^2 / ||G||^2`` at the last
        refresh, or None) and, with ``spectra=True``, ``spectra`` (those eigenvalues per mode, decreasing, lists
        of floats).
        """
        return diagnostics.subspace_stats(self, spectra)

    def captured_energy_now(self) -> list[dict[str, Any]]:
        """How much of each projected parameter's *current* gradient its current subspace captures.

        ``||project(G)||^2 / ||G||^2`` with the stored factors (one projection per parameter, one host read in
        all), for a lazy refresh policy; call it while gradients exist (e.g. before :meth:`step`). Entries:
        ``group``, ``index``, ``energy``; parameters without factors or gradients are left out.
        """
        return diagnostics.captured_energy_now(self)

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
        return diagnostics.gradient_spectra(self, self._group_indices(group_idx))

    def state_bytes(self) -> dict[str, Any]:
        """Exact bytes of optimizer state tensors: ``{"total": int, "groups": [int per param group]}``.

        :func:`app.optim.schema.predict_state_bytes` predicts them; compare with
        :func:`app.memory.adamw_state_bytes` (what ``torch.optim.AdamW`` would hold).
        """
        groups = tensor_state_bytes(self.state, self.param_groups)
        return {"total": sum(groups), "groups": groups}

    # -------------------------------------------------------------------------------- checkpointing

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like ``torch.optim.Optimizer`` but keep each state tensor's saved dtype.

        torch casts floating state to a real parameter's dtype and moves every entry to the parameter's device;
        this optimizer's state has fixed dtypes (real second moments, int64 counters, float32 diagnostics,
        bfloat16 moments) and host-side counters, so each entry is restored from the saved value: host keys on
        the CPU, the rest on the parameter's device.
        """
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        saved_state = state_dict["state"]
        for pid, p in zip(saved_ids, params, strict=True):
            if pid in saved_state:
                self.state[p] = {
                    k: v.to(device="cpu" if k in HOST_KEYS else p.device) if isinstance(v, Tensor) else v
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
        gap = None if group_idx in self._policy_groups else group["update_proj_gap"]
        sparse_first = group["composition"] == "sparse_first"
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
            factors = factors_from_state(state, layout) if "step" in state else None
            item.refresh = (
                factors is None
                or group["refresh_pending"]
                or (gap is not None and int(state["step"]) - int(state["last_refresh"]) >= gap)
            )
            if sparse_first:
                self._split_sparse_first(item, state, group)
            if not item.refresh:
                item.core = tucker.project(item.grad, factors)
            items.append(item)
        return items

    def _split_sparse_first(self, item: _Work, state: dict[str, Any], group: dict[str, Any]) -> None:
        """``composition="sparse_first"``: take the sparse part from ``G`` and leave ``G - S`` to the subspace
        (``item.grad`` becomes a new tensor; ``p.grad`` and the state are untouched: the step may be skipped)."""
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
        item.sparse_index, item.sparse_values, item.sparse_total = index, values, tucker.norm_sq(item.grad)
        item.grad = residual

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
            f"param_groups[{it.group_idx}] {param_label(group.get('param_names'), it.param_idx)} "
            f"(shape {tuple(it.param.shape)}, {it.param.dtype})"
        )

    def _update_group(self, group: dict[str, Any], items: list[_Work]) -> None:
        """Refreshes, the low-rank (or full-tensor) Adam update with decay, then the sparse part's update."""
        bf16 = group["moment_dtype"] == "bfloat16"
        if bf16:
            for it in items:
                decode_moments(it.param, self.state[it.param])
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
                if "exp_avg" not in state or state["exp_avg"].shape != p.shape or factor_keys(state):
                    _init_dense(p, state)
                fs = None
            else:
                if it.refresh:
                    it.core = refresh_subspace(
                        state, it.grad, it.layout, p, group, it.grad_norm_sq, lambda it=it: self._describe(it)
                    )
                fs = factors_from_state(state, it.layout)
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
                    state["residual_norm"] = torch.zeros((), dtype=real_dtype(p.dtype), device=p.device)
                residual_grads.append(it.grad)
                residual_norms.append(state["residual_norm"])
            else:
                residual_grads.append(None)
                residual_norms.append(None)
        scale = group["scale"]
        scales = [
            (1 / math.sqrt(kept_fraction(it.layout)) if scale == "auto" else scale) if it.layout else 1.0
            for it in items
        ]
        hyper = AdamHyper.of(group)
        if params:
            tensor_galore_adamw(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                factors,
                bias_steps,
                hyper=hyper,
                scales=scales,
                residual_grads=residual_grads if residual else None,
                residual_norms=residual_norms if residual else None,
                residual_limit=group["residual_limit"],
            )
        self._update_sparse(group, items, hyper)
        if bf16:
            # the update is done: drop this step's projected gradients and the float moments (the state keeps
            # them until each is rounded) before the rounding's workspace is allocated
            del grads, exp_avgs, exp_avg_sqs, residual_grads
            for it in items:
                it.core = it.sparse_values = it.grad = None
                self._encode_moments(it, self.state[it.param], group)

    # -------------------------------------------------------------------------------- the sparse part

    def _position(self, group_idx: int, param_idx: int) -> int:
        """The parameter's position in the optimizer's parameter list, all groups flattened (the same on every
        rank that builds the same groups)."""
        return sum(len(g["params"]) for g in self.param_groups[:group_idx]) + param_idx

    def _select(self, x: Tensor, k: int, group: dict[str, Any], position: int, step_idx: int) -> Tensor:
        if group["sparse_type"] == "topk":
            return sparse.topk_indices(x, k)
        seed = sparse.mix_seed(group["seed"], step_idx, position, _SALT_SELECT)
        return sparse.randk_indices(x.numel(), k, seed, x.device)

    def _sparse_part(self, it: _Work, state: dict[str, Any], group: dict[str, Any]) -> tuple[Tensor, Tensor] | None:
        """``(index, values)`` of this step's sparse part (after the low-rank update of ``it``), or None."""
        if it.sparse_index is not None:  # sparse_first: chosen in _collect
            return it.sparse_index, it.sparse_values
        if group["composition"] != "lowrank_first" or not (it.refresh or "sparse_index" in state):
            return None
        k = sparse.sparse_count(group["sparse_ratio"], it.param.numel())
        if it.refresh and k == 0:
            return None
        factors = factors_from_state(state, it.layout)
        if not it.refresh:  # the residual at the kept positions only
            index = state["sparse_index"]
            return index, sparse.gather(it.grad, index) - sparse.gather_project_back(it.core, factors, index)
        residual = it.grad - tucker.project_back(it.core, factors)
        step_idx = int(state["step"]) - 1
        index = self._select(residual, k, group, self._position(it.group_idx, it.param_idx), step_idx)
        return index, sparse.gather(residual, index)

    def _update_sparse(self, group: dict[str, Any], items: list[_Work], hyper: AdamHyper) -> None:
        params, values, indices, exp_avgs, exp_avg_sqs, bias_steps = [], [], [], [], [], []
        reset = group["refresh_moments"] == "reset"
        for it in items:
            state = self.state[it.param]
            if it.layout is None:
                continue
            part = self._sparse_part(it, state, group)
            if it.refresh:
                if part is None:
                    for key in [k for k in SPARSE_KEYS if k in state]:
                        del state[key]
                    continue
                _refresh_sparse(it, state, part, reset)
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
            sparse_adamw(
                params, values, indices, exp_avgs, exp_avg_sqs, bias_steps, hyper=hyper, scale=group["sparse_scale"]
            )

    def _encode_moments(self, it: _Work, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Round every moment of ``it``'s parameter to bfloat16 (after the step's update)."""
        p = it.param
        gen = None
        if group["moment_rounding"] == "stochastic":
            step_idx = int(state["step"]) - 1
            seed = sparse.mix_seed(group["seed"], step_idx, self._position(it.group_idx, it.param_idx), _SALT_ROUND)
            gen = torch.Generator(device=p.device).manual_seed(seed)
        for key in FIRST_MOMENTS + SECOND_MOMENTS:
            v = state.get(key)
            if v is not None and v.dtype != torch.bfloat16:
                state[key] = sparse.to_bfloat16(v, gen)


def _init_dense(p: Tensor, state: dict[str, Any]) -> None:
    for key in [k for k in state if k != "step" and k != "nonfinite_skips"]:
        del state[key]  # a parameter whose group switched from projected to full
    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros(p.shape, dtype=real_dtype(p.dtype), device=p.device)


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
        exp_avg_sq = torch.zeros(index.numel(), dtype=real_dtype(p.dtype), device=p.device)
    total = it.sparse_total  # sparse_first: ||G||^2 (it.grad is G - S there)
    if total is None:
        total = it.grad_norm_sq if it.grad_norm_sq is not None else tucker.norm_sq(it.grad)
    state["sparse_index"] = index
    state["sparse_exp_avg"], state["sparse_exp_avg_sq"] = exp_avg, exp_avg_sq
    state["sparse_energy"] = tucker.captured_energy(values, values, total.to(values.device))
