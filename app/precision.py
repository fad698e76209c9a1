"""Which lower-precision settings an FNO can train with, on which device: checked before training starts.

Two knobs lower the precision of an FNO's training step: Lightning's ``trainer.precision`` (``bf16-mixed`` and
``16-mixed`` run the forward pass under ``torch.autocast``; ``bf16-true``/``16-true``/``64-true`` cast the module)
and neuraloperator's ``fno_block_precision`` of each spectral convolution (``"half"``: the FFTs and the spectral
contraction in half precision; ``"mixed"``: the forward FFT in full precision, the contraction and the inverse FFT
in half). What works was found by training an FNO with each combination (torch 2.13 CPU build, neuraloperator 2.0,
Lightning 2.6; README, "Mixed precision"):

* ``bf16-mixed`` works on CPU for the real and the complex FNO: the lifting, projection, skip and channel-MLP
  convolutions run in bfloat16; CPU autocast runs every FFT in float32 (``torch.fft`` is on its float32 list), so
  the spectral convolution stays in float32/complex64; parameters, gradients and optimizer state keep their dtype.
  ``16-mixed`` on CPU is run by Lightning as ``bf16-mixed`` (with its own warning). On CUDA both are left to the
  device: autocast does not upcast FFTs there, so they see half-precision inputs (cuFFT: float16 only for
  power-of-two sizes; bfloat16 depending on the torch build). Not refused.
* ``bf16-true``, ``16-true`` and ``64-true`` cannot train any FNO, on any device: Lightning casts the module with
  ``Module.to(dtype)``, which turns the complex spectral weights into real ones (imaginary parts dropped: a silent
  wrong model) for bfloat16/float16, and leaves them complex64 next to float64 activations for ``64-true`` (the
  contraction then fails). Refused whenever the model has complex parameters.
* ``fno_block_precision="half"`` or ``"mixed"``: torch's CPU FFT (pocketfft/MKL) supports float32 and float64 only,
  so both fail on CPU: refused there. On CUDA cuFFT computes in half precision only for power-of-two signal sizes,
  so there both need every FFT size (each grid of the data, padded by ``domain_padding``) to be a power of two;
  refused otherwise, naming the sizes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

__all__ = ["check_precision"]

#: Lightning precisions that cast the whole module (``Module.to`` / ``Module.double``)
_CAST_PRECISIONS = {"bf16-true": "bfloat16", "16-true": "float16", "64-true": "float64"}


def _spectral_precisions(model: nn.Module) -> dict[str, str]:
    """``fno_block_precision`` of each spectral convolution of ``model`` (neuraloperator's ``SpectralConv``)."""
    return {name: m.fno_block_precision for name, m in model.named_modules()
            if isinstance(getattr(m, "fno_block_precision", None), str) and hasattr(m, "n_modes")}


def _fft_sizes(model: nn.Module, grid: Sequence[int]) -> tuple[int, ...]:
    """The FFT sizes of ``model``'s spectral convolutions on ``grid``: the grid, padded by neuraloperator's
    ``DomainPadding`` (``round(p * n)`` on both sides of each axis)."""
    padding = getattr(getattr(model, "domain_padding", None), "domain_padding", None)
    if padding is None:
        return tuple(int(n) for n in grid)
    if isinstance(padding, (int, float)):
        padding = [float(padding)] * len(grid)
    return tuple(int(n) + 2 * round(float(p) * int(n)) for p, n in zip(padding, grid, strict=True))


def check_precision(
    model: nn.Module, precision: str, device_type: str, grids: Iterable[Sequence[int]] | None = None
) -> None:
    """Raise ``ValueError`` (naming the setting and the fix) if ``model`` cannot train at ``precision`` (the
    trainer's, e.g. ``"bf16-mixed"``) with its spectral convolutions' ``fno_block_precision`` on a device of type
    ``device_type`` (``"cpu"``, ``"cuda"``, ...); ``grids``: the data's spatial grids, if known. See the module
    docstring for what is refused and why; anything not known to fail passes."""
    precision = str(precision)
    if precision in _CAST_PRECISIONS and any(p.is_complex() for p in model.parameters()):
        what = ("turns them into real tensors (imaginary parts dropped)" if precision != "64-true"
                else "leaves them complex64 next to float64 activations, which the spectral contraction refuses")
        raise ValueError(
            f"trainer.precision={precision} casts the whole model to {_CAST_PRECISIONS[precision]}, but the FNO's "
            f"spectral weights are complex and the cast {what}; use trainer.precision=bf16-mixed (autocast: the "
            f"weights keep their dtype) or 32-true"
        )
    lowered = {name: p for name, p in _spectral_precisions(model).items() if p != "full"}
    if not lowered:
        return
    value = sorted(set(lowered.values()))[0]
    option = f"model.model.init_args.fno_block_precision={value}"
    ffts = "FFTs" if value == "half" else "inverse FFTs"
    if device_type == "cpu":
        raise ValueError(
            f"{option} runs the spectral convolutions' {ffts} in half precision, which torch's CPU FFT does not "
            f"support (float32 and float64 only); set fno_block_precision=full on CPU (trainer.precision=bf16-mixed "
            f"is what lowers the precision there), or train on a CUDA GPU"
        )
    if device_type == "cuda" and grids is not None:
        for grid in grids:
            sizes = _fft_sizes(model, grid)
            if any(n < 1 or n & (n - 1) for n in sizes):
                raise ValueError(
                    f"{option} runs {ffts} in half precision, which cuFFT computes only for power-of-two sizes, but "
                    f"the data's grid {list(grid)} gives FFT sizes {list(sizes)}; use a power-of-two grid (and "
                    f"domain_padding that keeps it one) or fno_block_precision=full"
                )
