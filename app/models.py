"""neuraloperator's FNO with a signature a config file can express.

``neuralop.models.FNO`` annotates ``non_linearity`` and ``conv_module`` as ``nn.Module`` but defaults them to a
function (``F.gelu``) and a class (``SpectralConv``), values no config parser can validate, so LightningCLI
rejects the class as given. This subclass changes nothing else: ``non_linearity`` is named by a string, the
convolution is neuraloperator's ``SpectralConv``, every other argument passes through unchanged, and the object
*is* a ``neuralop.models.FNO`` (its forward, state dict and ``n_modes`` are neuraloperator's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import neuralop.models
import torch.nn.functional as F

__all__ = ["FNO"]

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "tanh": F.tanh}


class FNO(neuralop.models.FNO):
    """Fourier Neural Operator (neuraloperator's ``FNO``).

    Args:
        n_modes: Fourier modes kept per spatial axis (its length is the number of spatial dimensions).
        in_channels: input channels (linked from the datamodule by the CLI).
        out_channels: output channels (linked from the datamodule by the CLI).
        hidden_channels: width of the Fourier layers.
        n_layers: number of Fourier layers.
        lifting_channel_ratio: width of the lifting MLP relative to ``hidden_channels``.
        projection_channel_ratio: width of the projection MLP relative to ``hidden_channels``.
        positional_embedding: ``"grid"`` appends the grid coordinates as input channels; None does not.
        non_linearity: activation between layers (complex data uses neuraloperator's complex GELU instead).
        norm: normalisation inside the Fourier blocks.
        complex_data: complex inputs and outputs (linked from the datamodule).
        use_channel_mlp: channel MLP after each spectral convolution.
        channel_mlp_dropout: dropout in the channel MLP.
        channel_mlp_expansion: hidden width ratio of the channel MLP.
        channel_mlp_skip: skip connection around the channel MLP.
        fno_skip: skip connection around each spectral convolution.
        domain_padding: fraction of padding for non-periodic problems (None = none).
        fno_block_precision: ``"full"``, ``"half"`` or ``"mixed"`` precision of the spectral convolutions.
        max_n_modes: upper bound on modes for incremental training (None = ``n_modes``).
        factorization: tensor factorisation of the spectral weights (None = dense, what Tensor-GaLore expects).
        rank: rank of that factorisation.
        separable: depthwise-separable spectral convolution.
        preactivation: activation before each block instead of after.
    """

    def __init__(
        self,
        n_modes: Sequence[int],
        in_channels: int = 1,
        out_channels: int = 1,
        hidden_channels: int = 32,
        n_layers: int = 4,
        lifting_channel_ratio: float = 2,
        projection_channel_ratio: float = 2,
        positional_embedding: Literal["grid"] | None = "grid",
        non_linearity: Literal["gelu", "relu", "silu", "tanh"] = "gelu",
        norm: Literal["ada_in", "group_norm", "instance_norm"] | None = None,
        complex_data: bool = False,
        use_channel_mlp: bool = True,
        channel_mlp_dropout: float = 0.0,
        channel_mlp_expansion: float = 0.5,
        channel_mlp_skip: Literal["linear", "identity", "soft-gating"] | None = "soft-gating",
        fno_skip: Literal["linear", "identity", "soft-gating"] | None = "linear",
        domain_padding: float | list[float] | None = None,
        fno_block_precision: Literal["full", "half", "mixed"] = "full",
        max_n_modes: Sequence[int] | None = None,
        factorization: str | None = None,
        rank: float = 1.0,
        separable: bool = False,
        preactivation: bool = False,
    ) -> None:
        if not n_modes or any(int(m) < 1 for m in n_modes):
            raise ValueError(f"n_modes={list(n_modes)} is invalid; give one positive int per spatial axis")
        super().__init__(
            n_modes=tuple(int(m) for m in n_modes),
            in_channels=in_channels,
            out_channels=out_channels,
            hidden_channels=hidden_channels,
            n_layers=n_layers,
            lifting_channel_ratio=lifting_channel_ratio,
            projection_channel_ratio=projection_channel_ratio,
            positional_embedding=positional_embedding,
            non_linearity=_ACTIVATIONS[non_linearity],
            norm=norm,
            complex_data=complex_data,
            use_channel_mlp=use_channel_mlp,
            channel_mlp_dropout=channel_mlp_dropout,
            channel_mlp_expansion=channel_mlp_expansion,
            channel_mlp_skip=channel_mlp_skip,
            fno_skip=fno_skip,
            domain_padding=domain_padding,
            fno_block_precision=fno_block_precision,
            max_n_modes=tuple(max_n_modes) if max_n_modes else None,
            factorization=factorization,
            rank=rank,
            separable=separable,
            preactivation=preactivation,
        )
