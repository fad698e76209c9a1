"""Optimizers for complex tensor weights: Tensor-GaLore AdamW and its pure building blocks.

Plain PyTorch (tensorly only for the reference solver); imports neither Lightning nor neuraloperator.
"""

from .tensor_galore import (
    NonFiniteGradientError,
    TensorGaLoreAdamW,
    projection_layout,
    tensor_galore_adamw,
)
from .tucker import abs_sq, captured_energy, hooi, hosvd, project, project_back, resolve_ranks

__all__ = [
    "TensorGaLoreAdamW",
    "NonFiniteGradientError",
    "tensor_galore_adamw",
    "projection_layout",
    "resolve_ranks",
    "hosvd",
    "hooi",
    "project",
    "project_back",
    "captured_energy",
    "abs_sq",
]
