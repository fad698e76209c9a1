"""Parameter groups for the optimizer, chosen by a structural rule (no attribute paths, no list indices).

A parameter is a *spectral weight* (projected by Tensor-GaLore) when it is complex, has at least
``min_ndim`` dimensions (``(in, out, *modes)``: 3 for a 1-D FNO, 4 for 2-D, 5 for 3-D) and belongs to a module
of one of ``module_types`` (by default neuraloperator's ``SpectralConv`` and its subclasses). The module-type
test keeps complex weights of complex-valued FNOs' lifting/projection convolutions out of the group.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["spectral_module_types", "split_param_groups"]


def spectral_module_types() -> tuple[type[nn.Module], ...]:
    """neuraloperator's spectral convolution classes (imported lazily: this module works without neuralop)."""
    try:
        from neuralop.layers.spectral_convolution import SpectralConv
    except ImportError:  # pragma: no cover - neuralop is a dependency of the app
        return ()
    return (SpectralConv,)


def split_param_groups(
    model: nn.Module,
    *,
    module_types: Sequence[type[nn.Module]] | None = None,
    min_ndim: int = 3,
    channel_modes: Sequence[int] | None = (0, 1),
) -> list[dict]:
    """Split ``model``'s trainable parameters into one group per spectral weight (``galore=True``) followed by
    one group of all other parameters (``galore=False``).

    A spectral weight's layout is ``(in, out, *Fourier modes)``; its group says so with ``layout_modes``
    (``channel_modes``, default ``(0, 1)``), which ``TensorGaLoreAdamW(proj_modes="auto")``, its default, projects:
    the channel modes compress well, the few Fourier modes do not (BENCHMARKS.md, "Tensor-GaLore defaults"). An
    explicit ``proj_modes`` (``None`` for every mode, the paper's form) overrides it; ``channel_modes=None`` leaves
    the layout unsaid.

    One group per spectral weight lets a policy (the subspace callback) set a rank per layer through the
    optimizer's per-group options; every group has a ``name`` (the parameter's qualified name, or ``"other"``).
    Empty groups are left out. The ``galore`` key is an explicit boolean, which optimizers without the option
    (e.g. ``torch.optim.AdamW``) keep as an inert key.
    """
    types = tuple(module_types) if module_types is not None else spectral_module_types()
    spectral_ids: set[int] = set()
    if types:
        for module in model.modules():
            if isinstance(module, types):
                for p in module.parameters():
                    if p.is_complex() and p.ndim >= min_ndim:
                        spectral_ids.add(id(p))
    groups, other = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in spectral_ids:
            group = {"params": [p], "galore": True, "name": name}
            if channel_modes is not None:
                group["layout_modes"] = tuple(channel_modes)
            groups.append(group)
        else:
            other.append(p)
    if other:
        groups.append({"params": other, "galore": False, "name": "other"})
    return groups
