"""Optimizers for complex tensor weights: Tensor-GaLore AdamW, TensorGRaD AdamW (low-rank + sparse, optional
bfloat16 state) and their pure building blocks (``tucker``, ``sparse``).

Plain PyTorch (tensorly only for the reference solver); imports neither Lightning nor neuraloperator.
"""

from .tensor_galore import (
    NonFiniteGradientError,
    TensorGaLoreAdamW,
    group_layout,
    projection_layout,
    tensor_galore_adamw,
)
from .tensorgrad import TensorGRaDAdamW, moment_itemsizes, sparse_state_bytes
from .tucker import abs_sq, captured_energy, hooi, hosvd, project, project_back, resolve_ranks

__all__ = [
    "TensorGaLoreAdamW",
    "TensorGRaDAdamW",
    "moment_itemsizes",
    "sparse_state_bytes",
    "NonFiniteGradientError",
    "tensor_galore_adamw",
    "projection_layout",
    "group_layout",
    "resolve_ranks",
    "hosvd",
    "hooi",
    "project",
    "project_back",
    "captured_energy",
    "abs_sq",
]
