"""Diagnostics of the subspaces: what a refresh records in the state (spectra, captured energy, drift), and the
read-only reports the optimizer offers a policy (:meth:`~app.optim.TensorGaLoreAdamW.subspace_stats`,
``captured_energy_now``, ``gradient_spectra``). Reports read device values back; nothing here runs in a step
other than :func:`record_refresh` at refresh steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from . import tucker
from .layout import group_layout
from .schema import factor_keys, factors_from_state

__all__ = ["record_refresh", "subspace_stats", "captured_energy_now", "gradient_spectra"]


def record_refresh(
    state: dict[str, Any],
    core: Tensor,
    grad: Tensor,
    grad_norm_sq: Tensor | None,
    new: Sequence[Tensor | None],
    old: Sequence[Tensor | None] | None,
    spectra: Sequence[Tensor | None] | None,
) -> None:
    """Write a refresh's diagnostics: ``spectrum_k`` (if the solver gave spectra), ``overlap`` (if there were old
    factors: per mode, the mean squared cosine of the principal angles between old and new subspaces) and
    ``energy`` (captured energy of ``grad`` by ``core``); no host sync."""
    if spectra is not None:
        for k, sp in enumerate(spectra):
            if sp is not None:
                state[f"spectrum_{k}"] = sp
    if old is not None:
        state["overlap"] = torch.stack(
            [
                torch.ones((), device=grad.device)  # an unprojected mode spans the full space
                if u is None
                else tucker.norm_sq(u.mH @ v) / min(u.shape[1], v.shape[1])
                for u, v in zip(new, old, strict=True)
            ]
        )
    state["energy"] = tucker.captured_energy(core, grad, grad_norm_sq)


def _name(group: dict[str, Any], idx: int) -> str | None:
    names = group.get("param_names")  # set by torch >= 2.6 for named parameters only
    return names[idx] if names else None


def subspace_stats(opt, spectra: bool = False) -> list[dict[str, Any]]:
    """See :meth:`app.optim.TensorGaLoreAdamW.subspace_stats`."""
    out = []
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            state = opt.state.get(p, {})
            keys = factor_keys(state)
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
            has_sparse = "sparse_index" in state
            entry = {
                "group": gi,
                "index": pi,
                "name": _name(group, pi),
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
                "state_bytes": sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, Tensor)),
                "sparse_numel": int(state["sparse_index"].numel()) if has_sparse else 0,
                "sparse_energy": float(state["sparse_energy"]) if has_sparse else None,
            }
            if spectra:
                entry["spectra"] = [spec[k].tolist() if k in spec else None for k in range(view_ndim)]
            out.append(entry)
    return out


def captured_energy_now(opt) -> list[dict[str, Any]]:
    """See :meth:`app.optim.TensorGaLoreAdamW.captured_energy_now`."""
    keys, energies = [], []
    for gi, group in enumerate(opt.param_groups):
        if not group["galore"]:
            continue
        for pi, p in enumerate(group["params"]):
            state = opt.state.get(p, {})
            layout = group_layout(p, group)
            if p.grad is None or layout is None or "step" not in state:
                continue
            factors = factors_from_state(state, layout)
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


def gradient_spectra(opt, group_indices: Sequence[int]) -> list[dict[str, Any]]:
    """See :meth:`app.optim.TensorGaLoreAdamW.gradient_spectra`."""
    out = []
    for gi in group_indices:
        group = opt.param_groups[gi]
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
