"""Predict training memory without training: parameters, gradients, optimizer state and activations.

Assumptions (documented in the README's memory section):

* **params**: the bytes of the model's parameters, exact (the model is built, nothing is run).
* **grads**: one gradient per trainable parameter, same size and dtype. With fused per-parameter updates
  (``OperatorModule(fused_update=True)``) a gradient is freed as soon as its parameter is updated, so the
  prediction is the largest single gradient (the peak while that parameter is being stepped).
* **optimizer state**: what the optimizer holds after its first step, from its param groups and its own rules
  (``TensorGaLoreAdamW``: its state schema, ``app.optim.schema``; ``torch.optim.Adam``/``AdamW``: two moments
  and a step per parameter). Exact, checked against measured bytes.
* **activations**: the tensors autograd saves for the backward pass during one forward pass at the given batch
  and grid, counted once per tensor and excluding the parameters, measured by running the forward pass on the
  ``meta`` device (no memory, no compute). A real device also needs transient buffers (FFT workspaces, the
  backward's temporaries), so a CUDA peak is somewhat higher; the test compares against ``max_memory_allocated``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from app.memory import tensor_bytes
from app.optim import TensorGaLoreAdamW, schema

__all__ = ["MemoryEstimate", "predict_state_bytes", "predict_param_state_bytes", "activation_bytes", "estimate_memory"]


def predict_state_bytes(optimizer: torch.optim.Optimizer, refreshes: int = 1) -> int:
    """Bytes of state ``optimizer`` will hold once every parameter has taken a step (no step is taken).

    ``TensorGaLoreAdamW`` (and its presets): the state schema (:mod:`app.optim.schema`); ``refreshes``:
    subspace refreshes each projected parameter has had (its first step is the first; from the second on, a
    float32 subspace-drift diagnostic per mode is added). ``torch.optim.Adam``/``AdamW``: two moments (three with
    ``amsgrad``) and a step per parameter.
    """
    return sum(predict_param_state_bytes(optimizer, refreshes))


def predict_param_state_bytes(optimizer: torch.optim.Optimizer, refreshes: int = 1) -> list[int]:
    """:func:`predict_state_bytes` per parameter, in param-group order (0 for a frozen parameter)."""
    if not isinstance(optimizer, (TensorGaLoreAdamW, torch.optim.Adam, torch.optim.AdamW)):
        raise NotImplementedError(
            f"no state model for {type(optimizer).__name__}; supported: TensorGaLoreAdamW, Adam, AdamW"
        )
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not p.requires_grad:
                out.append(0)
            elif isinstance(optimizer, TensorGaLoreAdamW):
                out.append(schema.schema_bytes(schema.group_param_schema(p, group, refreshes=refreshes)))
            else:
                moments = 3 if group.get("amsgrad") else 2
                out.append(moments * tensor_bytes(p) + 4)
    return out


def activation_bytes(model: nn.Module, input_shape: Sequence[int], dtype: torch.dtype = torch.float32) -> int:
    """Bytes autograd saves for backward in one forward pass of ``model`` on an input of ``input_shape``.

    The model is copied to the ``meta`` device, so this costs neither memory nor compute whatever its size.

    With activation checkpointing (``app.module.checkpoint_fno_layers``: each FNO layer, the lifting and the
    projection recomputed in backward) the peak of saved activations is predicted as what the rest of the model
    saves + the inputs of every recomputed call (kept from the forward pass to the backward pass) + the largest
    set one recomputed call saves (alive while that call's backward runs): an upper bound, since the latter
    calls' inputs are freed by then.
    """
    from app.module import _Recomputed, checkpoint_fno_layers

    meta = _meta_copy(model)
    regions = [m for m in meta.modules() if isinstance(m, _Recomputed)]
    if regions:
        checkpoint_fno_layers(meta, enabled=False)  # count what each recomputed call saves
    params = {id(p) for p in meta.parameters()}
    saved: dict[int, tuple[int, int]] = {}  # id of a saved tensor's base -> (bytes, call it was saved in; -1: none)
    inputs: dict[int, tuple[int, int]] = {}  # id of a recomputed call's input -> (bytes, call)
    keep: list[torch.Tensor] = []  # keep tensors alive so their ids stay unique
    current = [-1]
    calls: list[int] = []

    def base_of(t: torch.Tensor) -> torch.Tensor:
        return t._base if t._base is not None else t

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = base_of(t)
        if id(base) not in params and id(base) not in saved:
            saved[id(base)] = (tensor_bytes(base), current[0])
            keep.append(base)
        return t

    def pre(module, args, kwargs) -> None:
        call = len(calls)
        calls.append(call)
        current[0] = call
        x = args[0] if args else next(iter(kwargs.values()))
        inputs.setdefault(id(base_of(x)), (tensor_bytes(base_of(x)), call))
        keep.append(x)

    def post(module, args, kwargs, out) -> None:
        current[0] = -1

    handles = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in regions]
    handles += [m.register_forward_hook(post, with_kwargs=True) for m in regions]
    x = torch.empty(tuple(input_shape), dtype=dtype, device="meta")
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            meta(x)
    finally:
        for h in handles:
            h.remove()
    if not regions:
        return sum(b for b, _ in saved.values())
    outside = sum(b for key, (b, call) in saved.items() if call < 0 and key not in inputs)
    per_call = [sum(b for key, (b, c) in saved.items() if c == call and key not in inputs) for call in calls]
    return outside + sum(b for b, _ in inputs.values()) + max(per_call, default=0)


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy on the meta device, including tensors that modules cache as plain attributes (neuraloperator's
    grid embedding keeps its last grid in ``_grid``), which ``Module.to`` does not move."""
    clone = copy.deepcopy(model).to("meta")
    for module in clone.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor):
                setattr(module, name, value.to("meta"))
            elif isinstance(value, list) and value and all(isinstance(v, torch.Tensor) for v in value):
                setattr(module, name, [v.to("meta") for v in value])
    return clone


@dataclass(frozen=True)
class MemoryEstimate:
    params: int
    grads: int
    optimizer_state: int
    activations: int

    @property
    def total_without_activations(self) -> int:
        return self.params + self.grads + self.optimizer_state

    @property
    def total(self) -> int:
        return self.total_without_activations + self.activations

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "params+grads+state": self.total_without_activations, "total": self.total}


def estimate_memory(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    input_shape: Sequence[int] | None,
    *,
    fused_update: bool = False,
    input_dtype: torch.dtype = torch.float32,
) -> MemoryEstimate:
    """Predicted bytes per category for training ``model`` with ``optimizer`` (see the module docstring)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = max((tensor_bytes(p) for p in trainable), default=0) if fused_update else sum(map(tensor_bytes, trainable))
    return MemoryEstimate(
        params=sum(tensor_bytes(p) for p in model.parameters()),
        grads=grads,
        optimizer_state=predict_state_bytes(optimizer),
        activations=activation_bytes(model, input_shape, input_dtype) if input_shape is not None else 0,
    )
