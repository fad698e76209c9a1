"""TensorGRaD AdamW: :class:`~app.optim.TensorGaLoreAdamW` with a sparse part, under the name users know.

TensorGRaD (Loeschcke et al., 2025) adds to each projected gradient's Tucker part ``L`` a sparse part ``S`` that
keeps a fraction of the entries (see the ``sparse_ratio``, ``sparse_type``, ``composition`` and ``sparse_scale``
options of :class:`~app.optim.TensorGaLoreAdamW`, which implements it). This preset only changes two defaults:
``rank=0.2`` and ``sparse_ratio=0.05``, so that the two parts together see 25% of each gradient's entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor

from .tensor_galore import TensorGaLoreAdamW

__all__ = ["TensorGRaDAdamW"]


class TensorGRaDAdamW(TensorGaLoreAdamW):
    """:class:`TensorGaLoreAdamW` with TensorGRaD's defaults: a sparse part of 5% of the entries of each projected
    gradient next to a Tucker core of rank 0.2.

    Args:
        params, lr: as in :class:`TensorGaLoreAdamW`.
        rank: rank of the low-rank (Tucker) part; default 0.2.
        sparse_ratio: fraction of each projected parameter's entries in the sparse part; default 0.05
            (0 gives Tensor-GaLore itself).
        **options: every other option of :class:`TensorGaLoreAdamW` (``betas``, ``eps``, ``weight_decay``,
            ``galore``, ...), with its default there.

    Example::

        opt = TensorGRaDAdamW(split_param_groups(model), lr=5e-3, rank=0.2, sparse_ratio=0.05)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        *,
        rank: int | float | Sequence[int | float | None] = 0.2,
        sparse_ratio: float = 0.05,
        **options: Any,
    ) -> None:
        super().__init__(params, lr, rank=rank, sparse_ratio=sparse_ratio, **options)
