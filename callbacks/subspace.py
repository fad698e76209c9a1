"""SubspaceScheduler: the policy for Tensor-GaLore's subspaces (when to refresh, at which rank), and their diagnostics.

The optimizer (``app.optim.TensorGaLoreAdamW``) is the mechanism: it owns the factors, the refresh maths and what a
refresh does to the moments. This callback decides, and talks to it only through the controls of the
``app.optim.SubspaceControl`` protocol: ``attach_policy(group_idx)``, ``request_refresh(group_idx)``,
``set_rank(rank, group_idx)`` and the read-only ``subspace_stats()``, ``captured_energy_now()``,
``gradient_spectra()``, ``state_bytes()``. It writes no persistent group option but the rank it schedules.

Policies (every projected param group, i.e. ``galore=True``, is managed; one group per spectral weight):

* **refresh** -- ``"fixed"``: every ``gap`` steps; ``"geometric"``: gaps ``gap, gap*growth, ...`` capped at
  ``max_gap`` (:func:`callbacks.schedules.refresh_due`); ``"lazy"``: every ``check_every`` steps, measure how much
  of the current gradient the current subspace captures (``||project(G)||^2 / ||G||^2``, one projection) and
  refresh a layer only when that falls below ``lazy_threshold`` (times the energy captured at its last refresh if
  ``lazy_relative``), at most every ``min_gap`` and at least every ``max_gap`` steps. The callback owns the cadence:
  it attaches itself to the groups it manages (``attach_policy``), so the optimizer refreshes them only when asked
  (and at a parameter's first step). The flag is not saved: a run resumed without the callback refreshes at the
  optimizer's own ``update_proj_gap`` again, counted from each layer's last refresh.
* **rank** -- a :class:`~callbacks.schedules.RankSchedule` (constant, step, linear, cosine; over steps or epochs),
  per-layer overrides by name pattern (``rank_overrides``). A rank applies at a refresh: the rank in force at each
  refresh step is set just before it (``refresh_on_rank_change=True`` also refreshes as soon as the scheduled rank
  differs). Moments are carried into the new shape by the optimizer's ``refresh_moments`` rule.
* **automatic rank** (``auto_rank=True``) -- at each refresh, every mode of a refreshing layer gets the smallest rank
  whose top Gram eigenvalues of the *current* gradient hold ``>= 1 - epsilon`` of the gradient's energy (so the core
  keeps ``>= 1 - d*epsilon`` of it for a d-mode layer), capped by the rank schedule if one is given. With
  ``budget_bytes`` the whole optimizer state must fit that many bytes: each layer gets a ladder of candidates (every
  mode discarding at most the same share ``e >= epsilon``), and upgrades are bought greedily across layers by
  captured energy (a fraction of each layer's gradient energy) per byte until nothing more fits
  (:func:`allocate_ranks`). Split: the optimizer measures (``gradient_spectra``) and applies
  (``set_rank`` + ``request_refresh``); the rule and the cross-layer allocation (policy) live here.

Diagnostics (to every logger with ``log_metrics``; host reads happen only at refreshes and lazy checks, never at
other steps), stamped with the 0-based index of the optimizer step they concern. ``<name>`` is the param group's
``name`` (the parameter's qualified name; ``group<i>`` if absent):

* at each refresh, per refreshed layer: ``subspace/<name>/rank_<k>`` (per mode of the projected view),
  ``subspace/<name>/energy`` (captured energy ``||core||^2/||G||^2`` of the gradient it was computed from),
  ``subspace/<name>/overlap_<k>`` (from the layer's second refresh on: mean squared cosine of the principal angles
  between the old and new mode-k subspaces; 1 = no drift), and for every param group
  ``subspace/<name>/state_bytes``; overall ``subspace/state_bytes``, ``subspace/adamw_state_bytes`` (what
  ``torch.optim.AdamW`` would hold) and ``subspace/refresh_seconds`` (wall time of the optimizer step that ran the
  refreshes, all layers together; on CUDA bracketed by two synchronisations, at refresh steps only);
* at each lazy check: ``subspace/<name>/energy_now``;
* text ``subspace/ranks`` (TensorBoard; stored under the tag ``subspace/ranks/text_summary``): a markdown table
  of the ranks at the first refresh of a fit and whenever they change.

State (``state_dict``, plain numbers under ``state_key``): per layer the step of its last refresh and the energy its
subspace captured then. Schedules are pure functions of ``global_step``/``current_epoch``, so nothing else is saved;
``load_state_dict`` only stores these numbers (Lightning restores callbacks before it builds the optimizer). A
layer without a saved last refresh (the first step, or a run resumed from a checkpoint made without this callback)
is refreshed at once. Not supported: ``fused_update=True`` (gradients are freed inside backward; refused at start).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.optim import Optimizer

from app.memory import adamw_state_bytes
from app.optim import SubspaceControl, group_layout
from app.optim.schema import param_state_schema, schema_bytes

from .schedules import RankSchedule, rank_at, refresh_due, schedule_for

log = logging.getLogger(__name__)

__all__ = ["SubspaceScheduler", "LayerSpectra", "energy_rank", "allocate_ranks", "budget_state_bytes"]

_REFRESH = ("fixed", "geometric", "lazy")


# ------------------------------------------------------------------------------------------ rank selection


def energy_rank(spectrum: Sequence[float], epsilon: float) -> int:
    """The smallest ``r >= 1`` whose top ``r`` eigenvalues (``spectrum`` decreasing) hold ``>= 1 - epsilon`` of
    their sum (1 for an all-zero spectrum)."""
    total = float(sum(spectrum))
    if total <= 0:
        return 1
    need, acc = (1.0 - epsilon) * total, 0.0
    for r, lam in enumerate(spectrum, start=1):
        acc += lam
        if acc >= need:
            return r
    return len(spectrum)


def budget_state_bytes(shape: Sequence[int], dtype: torch.dtype, layout, options: dict[str, Any]) -> int:
    """Optimizer-state bytes a budget counts for one parameter (``layout``: ``(view, ranks)`` or None), from the
    optimizer's state schema; conservative: the entries that exist only after a second refresh (``overlap``) or a
    skipped step (``nonfinite_skips``) are counted."""
    return schema_bytes(param_state_schema(shape, dtype, layout, options, refreshes=2, skipped=True))


@dataclass
class LayerSpectra:
    """What rank allocation needs about one projected parameter: its layout view, per mode the Gram eigenvalues
    of its current gradient (None for unprojected modes), per-mode rank caps, and its parameter's dtype and
    optimizer options (for the state's bytes at candidate ranks, :func:`budget_state_bytes`)."""

    view: tuple[int, ...]
    spectra: list[list[float] | None]
    caps: list[int | None]
    dtype: torch.dtype
    options: dict[str, Any]

    def bytes(self, ranks: Sequence[int | None]) -> int:
        """The parameter's whole optimizer-state bytes at per-mode ``ranks`` of its view."""
        return budget_state_bytes(self.view, self.dtype, (self.view, tuple(ranks)), self.options)


def _tails(spectrum: Sequence[float]) -> list[float]:
    """``tails[r-1]``: the fraction of the spectrum's sum that rank ``r`` discards (``r = 1..n``)."""
    total = float(sum(spectrum))
    if total <= 0:
        return [0.0] * len(spectrum)
    out, acc = [], 0.0
    for lam in spectrum:
        acc += lam
        out.append(max(0.0, 1.0 - acc / total))
    return out


def _ladder(layer: LayerSpectra, epsilon: float) -> list[tuple[list[int | None], float, int]]:
    """A layer's candidate ranks, cheapest first: for every discard level ``e >= epsilon`` at which some mode's
    rank changes, each mode's smallest rank discarding ``<= e`` of that mode's energy (capped). Each candidate
    comes with its captured-energy bound ``1 - sum_k discarded_k`` and its rank-dependent bytes."""
    tails = [None if s is None else _tails(s) for s in layer.spectra]
    levels = sorted({1.0, epsilon, *(t for ts in tails if ts for t in ts if t > epsilon)}, reverse=True)
    out: list[tuple[list[int | None], float, int]] = []
    for e in levels:
        ranks: list[int | None] = []
        for ts, cap in zip(tails, layer.caps, strict=True):
            if ts is None:
                ranks.append(None)
                continue
            r = next((i + 1 for i, t in enumerate(ts) if t <= e), len(ts))
            ranks.append(min(r, cap or len(ts)))
        if out and ranks == out[-1][0]:
            continue
        bound = 1.0 - sum(ts[r - 1] for ts, r in zip(tails, ranks, strict=True) if ts is not None)
        out.append((ranks, bound, layer.bytes(ranks)))
    return out


def allocate_ranks(
    layers: Sequence[LayerSpectra], epsilon: float, budget: int | None = None
) -> tuple[list[list[int | None]], bool]:
    """Per-mode ranks for each layer: the epsilon ranks (:func:`energy_rank` per mode, capped), or, if their
    rank-dependent state exceeds ``budget`` bytes, the best allocation found within it.

    Within a layer every mode discards at most the same share ``e`` of the gradient energy (the epsilon rule at a
    coarser ``e``), which gives each layer a ladder of candidates from rank 1 everywhere up to its epsilon ranks.
    Across layers, starting from the cheapest candidates, the upgrade (one layer, to any higher rung) with the
    most captured energy per byte is bought while it fits; the energy of a candidate is the HOSVD bound
    ``1 - sum of the discarded eigenvalue shares`` (a fraction of that layer's gradient energy). Returns
    ``(ranks, fits)``; ``fits`` is False when even rank 1 everywhere exceeds the budget (those ranks are returned).
    """
    ladders = [_ladder(ly, epsilon) for ly in layers]
    if budget is None or sum(lad[-1][2] for lad in ladders) <= budget:
        return [lad[-1][0] for lad in ladders], True
    choice = [0] * len(layers)
    used = sum(lad[0][2] for lad in ladders)
    if used > budget:
        return [lad[0][0] for lad in ladders], False
    while True:
        best, best_ratio = None, 0.0
        for li, lad in enumerate(ladders):
            _, gain0, bytes0 = lad[choice[li]]
            for j in range(choice[li] + 1, len(lad)):
                _, gain, nbytes = lad[j]
                cost = nbytes - bytes0
                if cost > 0 and used + cost <= budget and (gain - gain0) / cost > best_ratio:
                    best, best_ratio = (li, j, cost), (gain - gain0) / cost
        if best is None:
            return [lad[c][0] for lad, c in zip(ladders, choice, strict=True)], True
        li, j, cost = best
        choice[li] = j
        used += cost


# ------------------------------------------------------------------------------------------ the callback


@dataclass
class _Pending:
    """Refreshes requested in ``on_before_optimizer_step``, reported after the optimizer step."""

    step: int
    groups: list[int]
    t0: float
    device: torch.device


def _same_rank(a: object, b: object) -> bool:
    if isinstance(a, Sequence) and isinstance(b, Sequence):
        return list(a) == list(b)
    return a == b and type(a) is type(b)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SubspaceScheduler(Callback):
    """Refresh policy, rank schedule and automatic rank selection for Tensor-GaLore, with TensorBoard diagnostics.

    See the module docstring for the policies, the logged tags and the saved state.

    Args:
        refresh: ``"fixed"``, ``"geometric"`` or ``"lazy"`` refresh policy.
        gap: steps between refreshes (``fixed``), the first gap (``geometric``).
        growth: factor by which each gap grows (``geometric``).
        max_gap: cap on the gap (``geometric``); for ``lazy``, refresh a layer at least this often. None: no cap.
        lazy_threshold: ``lazy``: refresh a layer when its current gradient's captured energy falls below this
            (times the energy captured at its last refresh if ``lazy_relative``).
        lazy_relative: compare with ``lazy_threshold`` times the energy captured at the layer's last refresh
            (True), or with ``lazy_threshold`` itself (False).
        check_every: ``lazy``: steps between measurements (one projection per layer and one host read each);
            None uses the trainer's ``log_every_n_steps``.
        min_gap: ``lazy``: never refresh a layer more often than every ``min_gap`` steps.
        rank: rank schedule for every managed layer; None leaves the optimizer's ``rank`` as configured.
        rank_overrides: ``{name pattern: schedule}``; the first pattern (``fnmatch`` on the group ``name``) that
            matches a layer replaces ``rank`` for it.
        refresh_on_rank_change: also refresh a layer as soon as its scheduled rank differs from its current one
            (otherwise the new rank waits for the next refresh).
        auto_rank: choose each refreshing layer's per-mode ranks from its current gradient (``epsilon``,
            ``budget_bytes``); a ``rank`` schedule then caps them.
        epsilon: ``auto_rank``: the energy each mode may discard.
        budget_bytes: ``auto_rank``: bytes the whole optimizer state (all groups) may hold; None: no budget.
    """

    def __init__(
        self,
        refresh: Literal["fixed", "geometric", "lazy"] = "fixed",
        gap: int = 200,
        growth: float = 2.0,
        max_gap: int | None = None,
        lazy_threshold: float = 0.8,
        lazy_relative: bool = True,
        check_every: int | None = None,
        min_gap: int = 1,
        rank: RankSchedule | None = None,
        rank_overrides: dict[str, RankSchedule] | None = None,
        refresh_on_rank_change: bool = False,
        auto_rank: bool = False,
        epsilon: float = 0.01,
        budget_bytes: int | None = None,
    ) -> None:
        if refresh not in _REFRESH:
            raise ValueError(f"refresh={refresh!r} is invalid; choose one of {', '.join(map(repr, _REFRESH))}")
        growth = 1.0 if refresh != "geometric" else growth
        refresh_due(0, gap, growth, max_gap if refresh == "geometric" else None)  # validates gap/growth/max_gap
        if max_gap is not None and (not isinstance(max_gap, int) or max_gap < 1):
            raise ValueError(f"max_gap={max_gap!r} is invalid: use None or an int >= 1")
        if not (isinstance(lazy_threshold, (int, float)) and 0 < lazy_threshold <= 1):
            raise ValueError(f"lazy_threshold={lazy_threshold!r} is invalid: use a float in (0, 1], e.g. 0.8")
        if check_every is not None and (not isinstance(check_every, int) or check_every < 1):
            raise ValueError(f"check_every={check_every!r} is invalid: use None or an int >= 1")
        if not isinstance(min_gap, int) or min_gap < 1:
            raise ValueError(f"min_gap={min_gap!r} is invalid: use an int >= 1")
        if not (isinstance(epsilon, (int, float)) and 0 <= epsilon < 1):
            raise ValueError(f"epsilon={epsilon!r} is invalid: use a float in [0, 1), e.g. 0.01")
        if budget_bytes is not None and (not isinstance(budget_bytes, int) or budget_bytes < 1):
            raise ValueError(f"budget_bytes={budget_bytes!r} is invalid: use None or an int > 0")
        if budget_bytes is not None and not auto_rank:
            raise ValueError("budget_bytes needs auto_rank=True (the budget is met by choosing ranks)")
        named = [("rank", rank), *((f"rank_overrides[{k!r}]", v) for k, v in (rank_overrides or {}).items())]
        for what, sched in named:
            if sched is not None and not isinstance(sched, RankSchedule):
                raise TypeError(f"{what} must be a callbacks.schedules.RankSchedule, got {type(sched).__name__}")
        self.refresh = refresh
        self.gap, self.growth, self.max_gap = gap, float(growth), max_gap
        self.lazy_threshold, self.lazy_relative = float(lazy_threshold), lazy_relative
        self.check_every, self.min_gap = check_every, min_gap
        self.rank, self.rank_overrides = rank, dict(rank_overrides or {})
        self.refresh_on_rank_change = refresh_on_rank_change
        self.auto_rank, self.epsilon, self.budget_bytes = auto_rank, float(epsilon), budget_bytes
        # state that global_step cannot give (saved): per layer name, last refresh step and the energy then
        self.last_refresh: dict[str, int] = {}
        self.refresh_energy: dict[str, float] = {}
        self._pending: _Pending | None = None
        self._logged_ranks: dict[str, tuple] = {}
        self._warned_budget = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(refresh=self.refresh)

    # -------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {"last_refresh": dict(self.last_refresh), "refresh_energy": dict(self.refresh_energy)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Store the saved numbers; the optimizer is untouched (it does not exist yet during a restore)."""
        self.last_refresh = {str(k): int(v) for k, v in state_dict.get("last_refresh", {}).items()}
        self.refresh_energy = {str(k): float(v) for k, v in state_dict.get("refresh_energy", {}).items()}

    # -------------------------------------------------------------------------------- hooks

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if getattr(pl_module, "fused_update", False):
            raise ValueError(
                "SubspaceScheduler acts between backward and the optimizer step, but fused_update=True updates "
                "each parameter inside backward and frees its gradient; set model.fused_update=false or remove "
                "the callback"
            )
        self._pending, self._logged_ranks = None, {}

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Give the optimizer its own cadence back (the optimizer may outlive the fit)."""
        for optimizer in trainer.optimizers if stage == "fit" else ():
            opt = getattr(optimizer, "optimizer", optimizer)
            if isinstance(opt, SubspaceControl):
                opt.detach_policy()

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        opt = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the torch optimizer
        managed = self._managed(opt)
        if not managed:
            return
        step, epoch = trainer.global_step, trainer.current_epoch
        due = self.due_groups(opt, managed, step, epoch, trainer)
        if not due:
            return
        self.apply_ranks(opt, due, step, epoch)
        for gi in due:
            opt.request_refresh(gi)
            self.last_refresh[self._name(opt, gi)] = step
        device = opt.param_groups[due[0]]["params"][0].device
        _sync(device)
        self._pending = _Pending(step, due, time.perf_counter(), device)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        pending = self._pending
        if pending is None or trainer.global_step <= pending.step:  # accumulating: the optimizer has not stepped
            return
        self._pending = None
        _sync(pending.device)
        seconds = time.perf_counter() - pending.t0
        opt = trainer.optimizers[0]
        stats = [s for s in opt.subspace_stats() if s["group"] in pending.groups]  # host read (a refresh step)
        metrics: dict[str, float] = {"subspace/refresh_seconds": seconds}
        for s in stats:
            name = self._name(opt, s["group"])
            self.refresh_energy[name] = s["energy"]
            metrics[f"subspace/{name}/energy"] = s["energy"]
            for k, r in enumerate(s["ranks"]):
                if r is not None:
                    metrics[f"subspace/{name}/rank_{k}"] = r
            for k, o in enumerate(s["overlap"] or ()):
                if o is not None:
                    metrics[f"subspace/{name}/overlap_{k}"] = o
        sizes = opt.state_bytes()
        metrics["subspace/state_bytes"] = sizes["total"]
        metrics["subspace/adamw_state_bytes"] = adamw_state_bytes(
            p for g in opt.param_groups for p in g["params"] if p.requires_grad
        )
        for gi, n in enumerate(sizes["groups"]):
            metrics[f"subspace/{self._name(opt, gi)}/state_bytes"] = n
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=pending.step)
        self._log_ranks_table(trainer, opt, pending.step, stats, sizes)

    # -------------------------------------------------------------------------------- policy (pure of the step,
    # plus the saved last refresh and energy per layer)

    def due_groups(self, opt: Optimizer, managed: list[int], step: int, epoch: int, trainer: Trainer | None = None):
        """Indices of the managed groups to refresh at optimizer step ``step`` (reads the device only at lazy
        checks)."""
        names = {gi: self._name(opt, gi) for gi in managed}
        due = {gi for gi in managed if names[gi] not in self.last_refresh}  # first refresh of this layer
        if self.refresh in ("fixed", "geometric"):
            if refresh_due(step, self.gap, self.growth, self.max_gap if self.refresh == "geometric" else None):
                due.update(managed)
        else:
            since = {gi: step - self.last_refresh.get(names[gi], step) for gi in managed}
            if self.max_gap is not None:
                due.update(gi for gi in managed if since[gi] >= self.max_gap)
            every = self.check_every or (trainer.log_every_n_steps if trainer is not None else 50)
            if step % every == 0 and len(due) < len(managed):  # nothing to measure when every layer refreshes
                due.update(self._lazy_check(opt, managed, names, since, step, trainer))
        if self.refresh_on_rank_change and not self.auto_rank:
            for gi in managed:
                sched = schedule_for(names[gi], self.rank_overrides, self.rank)
                if sched is not None and not _same_rank(rank_at(sched, step, epoch), opt.param_groups[gi]["rank"]):
                    due.add(gi)
        return sorted(due)

    def _lazy_check(self, opt, managed, names, since, step, trainer) -> set[int]:
        now: dict[int, float] = {}
        for entry in opt.captured_energy_now():  # one projection per layer, one host read
            gi = entry["group"]
            if gi in names:
                now[gi] = min(now.get(gi, 1.0), entry["energy"])
        due = set()
        for gi, energy in now.items():
            ref = self.refresh_energy.get(names[gi]) if self.lazy_relative else None
            threshold = self.lazy_threshold * (1.0 if ref is None else ref)
            if energy < threshold and since[gi] >= self.min_gap:
                due.add(gi)
        if trainer is not None and now:
            metrics = {f"subspace/{names[gi]}/energy_now": e for gi, e in now.items()}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        return due

    def apply_ranks(self, opt: Optimizer, due: Sequence[int], step: int, epoch: int) -> None:
        """Set the rank of each group in ``due`` (about to refresh): chosen automatically, or the schedule's."""
        if self.auto_rank:
            for gi, spec in self.choose_ranks(opt, due, step, epoch).items():
                opt.set_rank(spec, gi)
            return
        for gi in due:
            sched = schedule_for(self._name(opt, gi), self.rank_overrides, self.rank)
            if sched is None:
                continue
            value = rank_at(sched, step, epoch)
            if not _same_rank(value, opt.param_groups[gi]["rank"]):
                opt.set_rank(value, gi)

    def choose_ranks(self, opt: Optimizer, due: Sequence[int], step: int, epoch: int) -> dict[int, Any]:
        """Automatic ranks for the groups in ``due`` from their current gradients (one host read): a rank spec
        per group (a per-mode list of ints, or one int for the matrix layout)."""
        entries = [e for gi in due for e in opt.gradient_spectra(gi)]
        for gi in due:
            if sum(1 for e in entries if e["group"] == gi) > 1:
                raise ValueError(
                    f"auto_rank sets one rank per param group, but param_groups[{gi}] has several projected "
                    "parameters; give each its own group (app.param_groups.split_param_groups does)"
                )
        flat = [s for e in entries for s in e["spectra"] if s is not None]
        values = torch.cat([s.to(flat[0].device) for s in flat]).tolist() if flat else []
        layers, pos = [], 0
        for e in entries:
            group = opt.param_groups[e["group"]]
            p = group["params"][e["index"]]
            sched = schedule_for(self._name(opt, e["group"]), self.rank_overrides, self.rank)
            cap_spec = 1.0 if sched is None else rank_at(sched, step, epoch)
            caps = group_layout(p, group, cap_spec)[1]
            spectra = []
            for s in e["spectra"]:
                spectra.append(None if s is None else values[pos : pos + s.numel()])
                pos += 0 if s is None else s.numel()
            layers.append(LayerSpectra(tuple(e["view_shape"]), spectra, list(caps), p.dtype, group))
        budget = None
        if self.budget_bytes is not None:
            budget = self.budget_bytes - self._other_bytes(opt, {(e["group"], e["index"]) for e in entries})
        ranks, fits = allocate_ranks(layers, self.epsilon, budget)
        if not fits and not self._warned_budget:
            self._warned_budget = True
            warnings.warn(
                f"SubspaceScheduler: budget_bytes={self.budget_bytes} is below the optimizer state at rank 1 on "
                "every mode; using rank 1 (raise the budget)",
                RuntimeWarning,
                stacklevel=2,
            )
        out = {}
        for e, r in zip(entries, ranks, strict=True):
            projected = [x for x in r if x is not None]
            per_mode = [None if x is None else int(x) for x in r]  # None: a mode the layout leaves unprojected
            out[e["group"]] = projected[0] if len(projected) == 1 and len(r) == 2 else per_mode
            log.info("step %d: %s ranks %s", step, self._name(opt, e["group"]), out[e["group"]])
        return out

    def _other_bytes(self, opt: Optimizer, choosing: set[tuple[int, int]]) -> int:
        """Optimizer-state bytes of every parameter whose ranks are not being chosen (``(group, index)`` pairs),
        at their current ranks (:func:`budget_state_bytes`)."""
        total = 0
        for gi, group in enumerate(opt.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.requires_grad and (gi, pi) not in choosing:
                    total += budget_state_bytes(p.shape, p.dtype, group_layout(p, group), group)
        return total

    # -------------------------------------------------------------------------------- helpers

    def _managed(self, opt: Optimizer) -> list[int]:
        """The projected groups (``galore=True``); attaches this policy to them (idempotent, not persisted)."""
        managed = [gi for gi, g in enumerate(opt.param_groups) if g.get("galore")]  # any optimizer's groups
        if not managed:
            return []
        if not isinstance(opt, SubspaceControl):
            controls = [m for m in vars(SubspaceControl) if callable(getattr(SubspaceControl, m)) and m[0] != "_"]
            missing = [m for m in controls if not callable(getattr(opt, m, None))]
            raise TypeError(
                f"SubspaceScheduler needs an optimizer with the app.optim.SubspaceControl interface (missing: "
                f"{', '.join(missing)}; e.g. app.optim.TensorGaLoreAdamW), got {type(opt).__name__}"
            )
        for gi in managed:  # the callback owns the cadence while it is attached
            opt.attach_policy(gi)
        return managed

    @staticmethod
    def _name(opt: Optimizer, gi: int) -> str:
        return str(opt.param_groups[gi].get("name") or f"group{gi}")

    def _log_ranks_table(self, trainer: Trainer, opt: Optimizer, step: int, stats: list[dict], sizes: dict) -> None:
        ranks = {self._name(opt, s["group"]): tuple(s["ranks"]) for s in stats}
        if all(self._logged_ranks.get(n) == r for n, r in ranks.items()):
            return
        self._logged_ranks.update(ranks)
        rows = [
            "| layer | shape | ranks | core / weight | captured energy | state bytes |",
            "|---|---|---|---:|---:|---:|",
        ]
        for s in stats:
            numel = math.prod(s["shape"])
            rows.append(
                f"| {self._name(opt, s['group'])} | {'x'.join(map(str, s['shape']))} | "
                f"{', '.join('-' if r is None else str(r) for r in s['ranks'])} | {s['core_numel'] / numel:.3f} | "
                f"{s['energy']:.3f} | {sizes['groups'][s['group']]} |"
            )
        table = "\n".join(rows)
        log.info("subspace ranks at step %d:\n%s", step, table)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                experiment.add_text("subspace/ranks", table, global_step=step)
