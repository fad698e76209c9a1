"""What a resume must match: the data and the optimizer of the checkpoint (the model is checked by
``OperatorModule.on_load_checkpoint``). Each function returns the differences as lines for an error message
(empty: they match); the CLI calls them before anything is written, the module again once the data is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DATA_IDENTITY_KEY", "data_differences", "optimizer_differences", "group_layout"]

#: where ``OperatorModule.on_save_checkpoint`` stores ``datamodule.identity()`` in a checkpoint
DATA_IDENTITY_KEY = "data_identity"

# Group keys every optimizer may gain or lose without being another optimizer: the parameters themselves, their
# names (added by the module) and what LR schedulers add.
_VOLATILE_KEYS = {"params", "param_names", "initial_lr", "name", "galore"}


def _close(a: Any, b: Any, rtol: float = 1e-4, atol: float = 1e-7) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=rtol, abs_tol=atol)
        except (TypeError, ValueError):
            return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, rtol, atol) for x, y in zip(a, b, strict=True))
    return a == b


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def data_differences(saved: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> list[str]:
    """How the data described by ``current`` (``datamodule.identity()``) differs from the checkpoint's ``saved``.

    Keys whose current value is ``None`` (e.g. normalisation statistics before ``setup``) and keys only one side
    has (a setting added to the code since) are not compared; floats compare with a relative tolerance of 1e-4.
    """
    if not isinstance(saved, Mapping) or not isinstance(current, Mapping):
        return []
    out = []
    for key in sorted(saved.keys() & current.keys()):
        a, b = saved[key], current[key]
        if a is None or b is None or _close(a, b):
            continue
        out.append(f"data {key}: {_short(a)} in the checkpoint, {_short(b)} here")
    return out


def group_layout(param_groups: Sequence[Mapping[str, Any]]) -> list[tuple[int, bool, tuple[str, ...]]]:
    """Per group: the number of parameters, whether it is projected (``galore``) and its option names."""
    return [
        (len(g["params"]), bool(g.get("galore", False)), tuple(sorted(set(g) - _VOLATILE_KEYS)))
        for g in param_groups
    ]


def optimizer_differences(
    checkpoint: Mapping[str, Any], optimizer_cfg: Any, param_groups: Sequence[Mapping]
) -> list[str]:
    """How the optimizer about to be built (its config ``optimizer_cfg`` and its ``param_groups``) differs from the
    one whose state the checkpoint holds: its class (from the checkpoint's hyperparameters, when it has them), the
    number of groups, the parameters per group, which groups are projected, and the groups' option names (a
    fingerprint of the class when the checkpoint has no hyperparameters)."""
    states = checkpoint.get("optimizer_states") or []
    if not states:
        return []
    out = []
    saved_cfg = (checkpoint.get("hyper_parameters") or {}).get("optimizer")
    saved_cls, cls = _class_path(saved_cfg), _class_path(optimizer_cfg)
    if saved_cls and cls and saved_cls != cls:
        out.append(f"model.optimizer: {saved_cls} in the checkpoint, {cls} here")
    if len(states) != 1:
        return out + [f"the checkpoint holds {len(states)} optimizers, this configuration builds 1"]
    saved, here = group_layout(states[0].get("param_groups", [])), group_layout(param_groups)
    if len(saved) != len(here):
        return out + [f"{len(saved)} parameter group(s) in the checkpoint, {len(here)} here"]
    for i, ((n_a, g_a, keys_a), (n_b, g_b, keys_b)) in enumerate(zip(saved, here, strict=True)):
        name = param_groups[i].get("name", i)
        if n_a != n_b:
            out.append(f"group {name!r}: {n_a} parameter(s) in the checkpoint, {n_b} here")
        if g_a != g_b:
            out.append(f"group {name!r}: galore={g_a} in the checkpoint, {g_b} here (model.spectral_galore)")
        if keys_a != keys_b and not (saved_cls and cls and saved_cls != cls):
            only_a, only_b = sorted(set(keys_a) - set(keys_b)), sorted(set(keys_b) - set(keys_a))
            out.append(f"group {name!r}: options {only_a} only in the checkpoint, {only_b} only here "
                       f"(another optimizer class)")
            break
    return out


def _class_path(cfg: Any) -> str | None:
    if isinstance(cfg, Mapping):
        return cfg.get("class_path")
    return getattr(cfg, "class_path", None)
