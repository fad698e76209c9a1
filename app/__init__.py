"""tgalore: train Fourier Neural Operators with Tensor-GaLore under PyTorch Lightning."""

__version__ = "0.1.0"
