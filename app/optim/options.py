"""The options of :class:`~app.optim.TensorGaLoreAdamW` param groups and their validation.

Every option is a per-group key (``torch.optim`` fills a group from ``defaults``). :func:`check_group` runs once
per group: in ``__init__``, in ``add_param_group``, when a state dict is loaded and when a control method
(``set_rank``) changes a key, never at every step. A key written straight into ``param_groups`` (as an LR
scheduler writes ``lr``) is the writer's responsibility.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from . import layout
from .checks import check_bool, check_choice, check_real, is_int, is_number

__all__ = ["CHOICES", "check_options", "check_group"]

CHOICES: dict[str, tuple[str, ...]] = {
    "proj": ("tucker", "matrix"),
    "solver": ("hosvd", "hooi", "tensorly"),
    "refresh_moments": ("keep", "project", "reset"),
    "nonfinite": ("error", "skip"),
    "complex_norm": ("element", "component"),
    "residual": ("none", "scaled"),
    "sparse_type": ("topk", "randk"),
    "composition": ("lowrank_first", "sparse_first"),
    "moment_dtype": ("param", "bfloat16"),
    "moment_rounding": ("stochastic", "nearest"),
}


def _check_int(name: str, value: object, lo: int, what: str) -> None:
    if not is_int(value) or value < lo:
        raise ValueError(f"{name}={value!r} is invalid: use an int >= {lo} ({what})")


def check_options(group: Mapping[str, Any]) -> None:
    """Validate every option of a param group (or of ``defaults``); the messages name the value and the fix."""
    check_real("lr", group["lr"], 0.0, "1e-3")
    betas = group["betas"]
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
        raise TypeError(f"betas={betas!r} is invalid: use a pair of floats, e.g. betas=(0.9, 0.999)")
    for i, b in enumerate(betas):
        if not is_number(b) or not 0.0 <= b < 1.0:
            raise ValueError(f"betas[{i}]={b!r} is invalid: each beta must be in [0, 1), e.g. betas=(0.9, 0.999)")
    check_real("eps", group["eps"], 0.0, "1e-8")
    check_real("weight_decay", group["weight_decay"], 0.0, "1e-4")
    if group["scale"] != "auto":
        check_real("scale", group["scale"], 0.0, "'auto' or 1.0", strict=True)
    for key in ("galore", "refresh_pending"):
        check_bool(key, group[key])
    layout.check_rank_spec(group["rank"])
    gap = group["update_proj_gap"]
    if gap is not None and (not is_int(gap) or gap < 1):
        raise ValueError(
            f"update_proj_gap={gap!r} is invalid: use an int >= 1 (steps between refreshes), or None "
            "to refresh only at the first step and on request_refresh()"
        )
    if group["proj_modes"] != "auto":
        layout.check_modes(group["proj_modes"])
    layout.check_modes(group["layout_modes"], "layout_modes")
    _check_int("rollup", group["rollup"], 1, "leading modes rolled into the rows of the matrix view, e.g. rollup=1")
    _check_int("solver_iters", group["solver_iters"], 1, "e.g. solver_iters=1")
    for key, choices in CHOICES.items():
        check_choice(key, group[key], choices)
    limit = group["residual_limit"]
    if limit is not None:
        check_real("residual_limit", limit, 1.0, "1.01", strict=True)
    ratio = group["sparse_ratio"]
    check_real("sparse_ratio", ratio, 0.0, "0.05")
    if ratio > 1:
        raise ValueError(f"sparse_ratio={ratio!r} is invalid: use a fraction of the entries in [0, 1], e.g. 0.05")
    check_real("sparse_scale", group["sparse_scale"], 0.0, "1.0")
    seed = group["seed"]
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed={seed!r} is invalid: use an int >= 0, e.g. seed=0")
    if group["residual"] != "none" and ratio > 0:
        raise ValueError(
            f"residual={group['residual']!r} with sparse_ratio={ratio!r}: the sparse part and the residual step "
            "both apply the gradient outside the subspace; use residual='none' or sparse_ratio=0"
        )


def check_group(group: MutableMapping[str, Any], group_idx: int, rank: object = None) -> None:
    """:func:`check_options` plus the layout of every parameter of a projected group (``rank`` overrides the
    group's, to check a new rank before it is set). Normalises list-valued options to tuples; errors are
    prefixed with ``param_groups[i]`` (and the parameter, for a layout error)."""
    for key in ("betas", "proj_modes", "layout_modes"):
        if isinstance(group.get(key), list):
            group[key] = tuple(group[key])
    try:
        check_options(group if rank is None else {**group, "rank": rank})
    except (TypeError, ValueError) as err:
        raise type(err)(f"param_groups[{group_idx}]: {err}") from None
    if not group["galore"]:
        return
    names = group.get("param_names")  # torch >= 2.6 keeps the names given with named parameters
    for i, p in enumerate(group["params"]):
        try:
            layout.group_layout(p, group, rank)
        except (TypeError, ValueError) as err:
            raise type(err)(f"param_groups[{group_idx}] {param_label(names, i)}: {err}") from None


def param_label(names: Sequence[str] | None, idx: int) -> str:
    """``params[i]`` and, if the group has ``param_names``, the parameter's name: for messages."""
    return f"params[{idx}]" + (f" ({names[idx]!r})" if names else "")
