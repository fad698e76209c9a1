"""Lower-memory equivalents of two pieces of neuraloperator's FNO: the dense spectral contraction and the layer
forward pass that activation checkpointing recomputes. Same operations in the same order, so the same values.

* :func:`contract_dense` replaces ``SpectralConv._contract`` (neuraloperator's ``_contract_dense``,
  ``einsum("bi...,io...->bo...")``) on dense, non-separable spectral convolutions (:func:`install_sliced_contraction`).
  The stock einsum's backward returns the weight's gradient as a permuted view of a ``(modes, in, out)`` batch of
  matrices, which autograd's ``AccumulateGrad`` must copy into a second, contiguous full-size tensor before
  ``.grad`` (and a fused update) can use it: two full-size gradients of the largest weight at once. Here the
  backward writes the gradient straight into one contiguous buffer, a chunk of Fourier modes at a time (no
  full-size intermediate), which ``AccumulateGrad`` takes over without a copy. The forward pass saves the input's
  retained modes (a compact copy, as the einsum does) and the weight itself (a parameter: no memory).
* :class:`LeanFNOLayers` is a mixin for neuraloperator's ``FNOBlocks`` whose layer forward passes drop each
  intermediate (the skip connection's output, the spectral convolution's output) as soon as it is used, where the
  stock forward keeps them as local variables until the layer returns. In an ordinary forward pass this changes
  little (autograd keeps what it needs); in a layer recomputed by activation checkpointing it is the peak: the
  whole recomputed layer is alive at its end.

Nothing here is persistent: no parameter, buffer or state-dict entry changes.
"""

from __future__ import annotations

import torch
from neuralop.layers import spectral_convolution
from neuralop.layers.complex import ctanh
from torch import Tensor, nn

__all__ = ["CHUNK_BYTES", "LeanFNOLayers", "contract_dense", "install_sliced_contraction"]

# Largest per-chunk intermediate of the sliced contraction (bytes): beyond it, the contraction runs a chunk of the
# first Fourier mode at a time. A weight within it runs as one chunk: exactly neuraloperator's einsum.
CHUNK_BYTES = 16 * 2**20

_stock_contract_dense = spectral_convolution._contract_dense


def _chunk_length(weight: Tensor) -> int:
    """Modes of the weight's first Fourier axis (dim 2) per chunk, so a chunk of the weight fits CHUNK_BYTES."""
    total = weight.numel() * weight.element_size()
    n = weight.shape[2]
    return n if total <= CHUNK_BYTES else max(1, n * CHUNK_BYTES // total)


def _chunks(n: int, length: int):
    for j in range(0, n, length):
        yield j, min(length, n - j)


class _SlicedDenseContraction(torch.autograd.Function):
    """``out[b, o, k...] = sum_i x[b, i, k...] * w[i, o, k...]``, chunk by chunk along the first mode ``k_0``.

    Backward (Wirtinger convention of torch's complex autograd): ``dx = sum_o g * conj(w)``,
    ``dw = sum_b conj(x) * g``, each written into its own contiguous buffer.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        length = _chunk_length(weight)
        ctx.length = length
        x = x.contiguous()  # the retained modes only: not a view keeping the full spectrum alive
        ctx.save_for_backward(x, weight)
        if length >= weight.shape[2]:
            return torch.einsum("bi...,io...->bo...", x, weight)
        out = x.new_empty((x.shape[0], weight.shape[1], *x.shape[2:]))
        for j, n in _chunks(weight.shape[2], length):
            out.narrow(2, j, n).copy_(torch.einsum("bi...,io...->bo...", x.narrow(2, j, n), weight.narrow(2, j, n)))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad
        gx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else None
        gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if need_w else None
        for j, n in _chunks(weight.shape[2], ctx.length):
            g = grad.narrow(2, j, n)
            if gx is not None:
                gx.narrow(2, j, n).copy_(torch.einsum("bo...,io...->bi...", g, weight.narrow(2, j, n).conj()))
            if gw is not None:
                gw.narrow(2, j, n).copy_(torch.einsum("bi...,bo...->io...", x.narrow(2, j, n).conj(), g))
        return gx, gw


def contract_dense(x: Tensor, weight, separable: bool = False) -> Tensor:
    """Drop-in for neuraloperator's ``_contract_dense`` (same signature and result) whose backward gives the
    weight's gradient as one contiguous tensor, computed a chunk of Fourier modes at a time. Layouts it does not
    handle (separable weights, half-precision ``complex32`` inputs, mixed dtypes, a weight that is not a dense
    tensor) take neuraloperator's own path."""
    if not separable and not torch.is_tensor(weight) and type(weight).__name__ == "DenseTensor":
        weight = weight.to_tensor()
    if (
        separable
        or not torch.is_tensor(weight)
        or x.ndim < 3
        or x.ndim != weight.ndim
        or x.dtype != weight.dtype
        or x.dtype == torch.complex32
        or x.shape[1] != weight.shape[0]
        or tuple(x.shape[2:]) != tuple(weight.shape[2:])
    ):
        return _stock_contract_dense(x, weight, separable=separable)
    return _SlicedDenseContraction.apply(x, weight)


def install_sliced_contraction(model: nn.Module) -> int:
    """Use :func:`contract_dense` in every spectral convolution of ``model`` that runs neuraloperator's dense
    contraction on a non-separable weight (in place; the instance attribute ``_contract`` neuraloperator sets
    from ``get_contract_fun``). Returns how many were switched; others (factorized ``implementation="factorized"``
    weights, separable convolutions) keep their own contraction."""
    count = 0
    for module in model.modules():
        if not isinstance(module, spectral_convolution.SpectralConv) or getattr(module, "separable", False):
            continue
        if getattr(module, "_contract", None) is _stock_contract_dense:
            module._contract = contract_dense
            count += 1
    return count


class LeanFNOLayers:
    """Mixin for ``neuralop.layers.fno_block.FNOBlocks``: its layer forward passes (both the post- and the
    pre-activation form) with the same operations in the same order (so the same autograd graph and the same
    gradients, bit for bit), but each intermediate dropped after its last use: the spectral convolution's output
    and the skip connection's once they are summed."""

    def _skips_and_convolution(self, x, index, output_shape):
        """The layer's two skip connections of ``x`` and its spectral convolution (after the stabilizer), in
        neuraloperator's order; the caller drops its own ``x`` on rebinding, so only the outputs stay alive."""
        conv = self.convs[index]
        skip_fno = skip_mlp = None
        if self.fno_skips is not None:
            skip_fno = conv.transform(self.fno_skips[index](x), output_shape=output_shape)
        if self.use_channel_mlp and self.channel_mlp_skips is not None:
            skip_mlp = conv.transform(self.channel_mlp_skips[index](x), output_shape=output_shape)
        if self.stabilizer == "tanh":
            x = ctanh(x) if self.complex_data else torch.tanh(x)
        return conv(x, output_shape=output_shape), skip_fno, skip_mlp

    def forward_with_postactivation(self, x, index=0, output_shape=None):
        x, skip_fno, skip_mlp = self._skips_and_convolution(x, index, output_shape)
        if self.norm is not None:
            x = self.norm[self.n_norms * index](x)
        if skip_fno is not None:
            x = x + skip_fno
            del skip_fno
        if index < (self.n_layers - 1):
            x = self.non_linearity(x)
        if self.use_channel_mlp:
            x = self.channel_mlp[index](x)
            if skip_mlp is not None:
                x = x + skip_mlp
                del skip_mlp
        if self.norm is not None:
            x = self.norm[self.n_norms * index + 1](x)
        if index < (self.n_layers - 1):
            x = self.non_linearity(x)
        return x

    def forward_with_preactivation(self, x, index=0, output_shape=None):
        x = self.non_linearity(x)
        if self.norm is not None:
            x = self.norm[self.n_norms * index](x)
        x, skip_fno, skip_mlp = self._skips_and_convolution(x, index, output_shape)
        if skip_fno is not None:
            x = x + skip_fno
            del skip_fno
        if index < (self.n_layers - 1):
            x = self.non_linearity(x)
        if self.norm is not None:
            x = self.norm[self.n_norms * index + 1](x)
        if self.use_channel_mlp:
            x = self.channel_mlp[index](x)
            if skip_mlp is not None:
                x = x + skip_mlp
                del skip_mlp
        return x
