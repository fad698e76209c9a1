"""The interface a refresh/rank policy (e.g. ``callbacks.subspace.SubspaceScheduler``) uses to drive an optimizer.

:class:`~app.optim.TensorGaLoreAdamW` implements it. Controls write param-group keys (``refresh_pending``,
``rank``) or the non-persisted policy flag; the rest only reads.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .layout import RankSpec

__all__ = ["SubspaceControl"]


@runtime_checkable
class SubspaceControl(Protocol):
    """What a subspace policy may call on an optimizer (see :class:`~app.optim.TensorGaLoreAdamW`)."""

    param_groups: list[dict[str, Any]]

    def attach_policy(self, group_idx: int | None = None) -> None:
        """The policy owns the group's refresh cadence until :meth:`detach_policy` (not persisted)."""

    def detach_policy(self, group_idx: int | None = None) -> None:
        """The group's own ``update_proj_gap`` applies again."""

    def request_refresh(self, group_idx: int | None = None) -> None:
        """Refresh the group's subspaces at the next step."""

    def set_rank(self, rank: RankSpec, group_idx: int | None = None) -> None:
        """The rank used from the group's next refresh on (validated first)."""

    def subspace_stats(self, spectra: bool = False) -> list[dict[str, Any]]:
        """Per projected parameter: ranks, energy, overlap, ... as plain numbers (reads the device)."""

    def captured_energy_now(self) -> list[dict[str, Any]]:
        """Energy of the current gradients captured by the current subspaces (reads the device)."""

    def gradient_spectra(self, group_idx: int | None = None) -> list[dict[str, Any]]:
        """Per-mode Gram eigenvalues of the current gradients (device tensors)."""

    def state_bytes(self) -> dict[str, Any]:
        """Exact bytes of the state: ``{"total": int, "groups": [int, ...]}``."""
