"""Optimizers for complex tensor weights: Tensor-GaLore AdamW (optionally with TensorGRaD's sparse part,
bfloat16 moments, a residual step), the TensorGRaD preset, and their pure building blocks.

Modules: ``tensor_galore`` (the optimizer: bookkeeping), ``options`` (validation), ``layout`` (views and ranks),
``kernels`` (functional Adam updates), ``refresh`` (solvers, moment transfer), ``diagnostics``, ``schema`` (the
state's keys, shapes, dtypes and bytes), ``control`` (the interface a policy uses), ``tucker`` (decompositions and
projections), ``sparse`` (sparse parts, bfloat16 storage), ``checks``.

Plain PyTorch (tensorly only for the reference solver); imports neither Lightning, nor neuraloperator, nor the
rest of ``app``.
"""

from .control import SubspaceControl
from .kernels import AdamHyper, sparse_adamw, tensor_galore_adamw
from .layout import group_layout, projection_layout, resolve_ranks
from .schema import StateEntry, group_param_schema, param_state_schema, predict_state_bytes
from .tensor_galore import NonFiniteGradientError, TensorGaLoreAdamW
from .tensorgrad import TensorGRaDAdamW
from .tucker import abs_sq, captured_energy, hooi, hosvd, project, project_back

__all__ = [
    "TensorGaLoreAdamW",
    "TensorGRaDAdamW",
    "SubspaceControl",
    "NonFiniteGradientError",
    "AdamHyper",
    "tensor_galore_adamw",
    "sparse_adamw",
    "projection_layout",
    "group_layout",
    "resolve_ranks",
    "StateEntry",
    "param_state_schema",
    "group_param_schema",
    "predict_state_bytes",
    "hosvd",
    "hooi",
    "project",
    "project_back",
    "captured_energy",
    "abs_sq",
]
