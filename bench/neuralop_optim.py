"""neuraloperator 2.0's Tensor-GaLore as a config-built optimizer, for the benchmarks' comparison row.

``neuralop.training.AdamW`` takes the projected parameters as ``galore_params`` and its rank and refresh gap as
constructor arguments; ``app.module.OperatorModule`` hands an optimizer factory its parameter groups, the spectral
weights' group marked ``galore=True``. :class:`NeuralopTensorGaLore` passes those groups through unchanged
(neuraloperator's ``step`` projects exactly the groups with ``galore=True``) and maps the options; the optimizer
is neuraloperator's, step for step.
"""

from __future__ import annotations

from collections.abc import Iterable

from neuralop.training import AdamW

__all__ = ["NeuralopTensorGaLore"]


class NeuralopTensorGaLore(AdamW):
    """``neuralop.training.AdamW`` built from parameter groups; ``rank``, ``update_proj_gap`` and ``scale`` are its
    ``galore_rank``, ``galore_update_proj_gap`` and ``galore_scale``."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        rank: float = 0.25,
        update_proj_gap: int = 50,
        scale: float = 1.0,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            galore_rank=rank,
            galore_update_proj_gap=update_proj_gap,
            galore_scale=scale,
        )
