"""Subspace schedules: pure functions of the training step (or epoch), like a learning-rate schedule.

Nothing here holds state, so a resumed run needs only ``global_step``/``current_epoch`` to continue a schedule:

* **refresh gaps** -- :func:`refresh_due`: the subspace is refreshed at steps ``t_0 = 0``, ``t_{i+1} = t_i + g_i``
  with ``g_i = min(round(gap * growth**i), max_gap)``: a fixed gap (``growth=1``) or a geometrically growing gap,
  capped (early training moves fast, later the subspace drifts slowly);
* **ranks** -- :class:`RankSchedule`: a rank spec (what ``TensorGaLoreAdamW(rank=...)`` takes) as a function of
  the step or epoch: constant, step (jumps at milestones), linear or cosine from ``start`` to ``end``;
* **per-layer overrides** -- :func:`schedule_for`: the first schedule whose name pattern matches a parameter
  group's ``name`` (``fnmatch`` syntax), else the default.

Interpolated ranks keep their kind: between two ints the value is rounded half up (a rank per mode); between two
floats it is a float (a fraction of the elements); per-mode lists interpolate elementwise.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from app.optim.checks import is_float, is_int, round_half_up
from app.optim.layout import RankSpec, check_rank_spec

__all__ = ["RankSchedule", "refresh_due", "gap_at", "rank_at", "schedule_for"]

_KINDS = ("constant", "step", "linear", "cosine")
_UNITS = ("step", "epoch")


# ------------------------------------------------------------------------------------------ refresh gaps


def _check_gap(gap: object, growth: object, max_gap: object) -> None:
    if not is_int(gap) or gap < 1:
        raise ValueError(f"gap={gap!r} is invalid: use an int >= 1 (optimizer steps between refreshes), e.g. gap=200")
    if not (is_int(growth) or is_float(growth)) or not (math.isfinite(growth) and growth >= 1):
        raise ValueError(f"growth={growth!r} is invalid: use a float >= 1 (1 = fixed gap), e.g. growth=2.0")
    if max_gap is not None and (not is_int(max_gap) or max_gap < gap):
        raise ValueError(f"max_gap={max_gap!r} is invalid: use None or an int >= gap ({gap})")


def _gaps(gap: int, growth: float, max_gap: int | None):
    """``g_0, g_1, ...`` (non-decreasing; constant once capped, or from the start when ``growth == 1``)."""
    i = 0
    while True:
        g = max(1, round_half_up(gap * growth**i))
        if max_gap is not None:
            g = min(g, max_gap)
        yield g
        i += 1


def _last_refresh_and_gap(step: int, gap: int, growth: float, max_gap: int | None) -> tuple[int, int]:
    """The last refresh step ``<= step`` and the gap that follows it (loops once per gap until the gap settles)."""
    if not is_int(step) or step < 0:
        raise ValueError(f"step={step!r} is invalid: use an int >= 0")
    _check_gap(gap, growth, max_gap)
    t = 0
    for g in _gaps(gap, growth, max_gap):
        if growth == 1 or g == max_gap:  # constant from here on: arithmetic
            t += (step - t) // g * g
            return t, g
        if step < t + g:
            return t, g
        t += g
    raise AssertionError("unreachable")  # pragma: no cover


def refresh_due(step: int, gap: int, growth: float = 1.0, max_gap: int | None = None) -> bool:
    """True if the (0-based) optimizer step ``step`` is a refresh step: ``0, g_0, g_0 + g_1, ...`` with
    ``g_i = min(round(gap * growth**i), max_gap)``.

    >>> [s for s in range(40) if refresh_due(s, gap=5, growth=2.0, max_gap=12)]
    [0, 5, 15, 27, 39]
    """
    return _last_refresh_and_gap(step, gap, growth, max_gap)[0] == step


def gap_at(step: int, gap: int, growth: float = 1.0, max_gap: int | None = None) -> int:
    """The gap in force at ``step``: the number of steps between the last refresh ``<= step`` and the next."""
    return _last_refresh_and_gap(step, gap, growth, max_gap)[1]


# ------------------------------------------------------------------------------------------ rank schedules


def _lerp(a: int | float, b: int | float, x: float) -> int | float:
    if is_int(a) and is_int(b):
        return round_half_up(a + (b - a) * x)
    return float(a) + (float(b) - float(a)) * x


def _check_pair(start: RankSpec, end: RankSpec) -> None:
    """``start`` and ``end`` must be interpolable: same structure, and each entry int-int or float-float."""
    pairs = [(start, end)]
    if isinstance(start, Sequence) or isinstance(end, Sequence):
        if not (isinstance(start, Sequence) and isinstance(end, Sequence) and len(start) == len(end)):
            raise ValueError(f"rank start={start!r} and end={end!r} must both be scalars or lists of equal length")
        pairs = list(zip(start, end, strict=True))
    for a, b in pairs:
        if is_int(a) != is_int(b):
            raise ValueError(
                f"rank start={start!r} and end={end!r} mix an int (a rank) with a float (a fraction of the "
                "elements); use two ints or two floats, e.g. start=0.5, end=0.1"
            )


@dataclass
class RankSchedule:
    """A rank spec as a function of the optimizer step (``unit="step"``) or the epoch (``unit="epoch"``).

    Args:
        kind: ``"constant"`` (always ``start``); ``"step"``: ``start`` before the first milestone, then equal
            jumps so that the last milestone reaches ``end``; ``"linear"``/``"cosine"``: ``start`` until
            ``begin``, then a linear or half-cosine ramp that reaches ``end`` at ``until`` and stays there.
        start: the rank at the beginning: an int (per mode), a float in (0, 1] (fraction of the elements) or a
            per-mode list (see ``TensorGaLoreAdamW``).
        end: the rank at the end (same kind as ``start``); required unless ``kind="constant"``.
        begin: step/epoch where a linear or cosine ramp starts.
        until: step/epoch where a linear or cosine ramp reaches ``end`` (> ``begin``).
        milestones: ascending steps/epochs of a ``"step"`` schedule.
        unit: whether ``begin``/``until``/``milestones`` count optimizer steps or epochs.
    """

    kind: Literal["constant", "step", "linear", "cosine"] = "constant"
    start: int | float | list[int | float] = 0.25
    end: int | float | list[int | float] | None = None
    begin: int = 0
    until: int | None = None
    milestones: list[int] = field(default_factory=list)
    unit: Literal["step", "epoch"] = "step"

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind={self.kind!r} is invalid; choose one of {', '.join(map(repr, _KINDS))}")
        if self.unit not in _UNITS:
            raise ValueError(f"unit={self.unit!r} is invalid; choose one of {', '.join(map(repr, _UNITS))}")
        if isinstance(self.start, tuple):
            self.start = list(self.start)
        if isinstance(self.end, tuple):
            self.end = list(self.end)
        self.milestones = [int(m) if is_int(m) else m for m in self.milestones]
        check_rank_spec(self.start, "start")
        if self.kind == "constant":
            return
        if self.end is None:
            raise ValueError(f"a {self.kind!r} rank schedule needs an end rank, e.g. end=0.1")
        check_rank_spec(self.end, "end")
        _check_pair(self.start, self.end)
        if self.kind == "step":
            ms = self.milestones
            if not ms or not all(is_int(m) and m >= 0 for m in ms) or list(ms) != sorted(set(ms)):
                raise ValueError(
                    f"milestones={ms!r} is invalid: a 'step' schedule needs strictly ascending ints >= 0, "
                    "e.g. milestones=[10, 20]"
                )
            return
        if not is_int(self.begin) or self.begin < 0:
            raise ValueError(f"begin={self.begin!r} is invalid: use an int >= 0")
        if not is_int(self.until) or self.until <= self.begin:
            raise ValueError(
                f"until={self.until!r} is invalid: a {self.kind!r} schedule needs an int until > begin ({self.begin})"
            )

    def progress(self, t: int) -> float:
        """How far from ``start`` (0) to ``end`` (1) the schedule is at step/epoch ``t``."""
        if self.kind == "constant":
            return 0.0
        if self.kind == "step":
            return sum(1 for m in self.milestones if t >= m) / len(self.milestones)
        x = min(max((t - self.begin) / (self.until - self.begin), 0.0), 1.0)
        return x if self.kind == "linear" else 0.5 * (1.0 - math.cos(math.pi * x))

    def __call__(self, t: int) -> RankSpec:
        """The rank spec at step/epoch ``t`` (pure: depends on ``t`` only)."""
        x = self.progress(t)
        if x == 0.0:
            return self.start
        if isinstance(self.start, Sequence):
            return [_lerp(a, b, x) for a, b in zip(self.start, self.end, strict=True)]
        return _lerp(self.start, self.end, x)


def rank_at(schedule: RankSchedule, step: int, epoch: int) -> RankSpec:
    """``schedule``'s rank at an optimizer step and epoch (it reads the one its ``unit`` names)."""
    return schedule(epoch if schedule.unit == "epoch" else step)


def schedule_for(
    name: str, overrides: Mapping[str, RankSchedule] | None, default: RankSchedule | None
) -> RankSchedule | None:
    """The schedule of the first pattern in ``overrides`` (in order) that matches ``name``, else ``default``.

    Patterns use ``fnmatch`` syntax on the param group's ``name`` (the parameter's qualified name), e.g.
    ``"fno_blocks.convs.0.*"`` or ``"*convs.[23].weight"``.
    """
    for pattern, schedule in (overrides or {}).items():
        if fnmatch.fnmatchcase(name, pattern):
            return schedule
    return default
