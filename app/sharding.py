"""Optimizer-state sharding across DDP processes with torch's ``ZeroRedundancyOptimizer`` (ZeRO stage 1).

``ZeroRedundancyOptimizer`` gives every parameter, as a whole tensor, to one process, runs the inner optimizer class
on each process's share (the *local* optimizer) and broadcasts the updated parameters after each step. Whole-tensor
ownership is what the Tucker step needs: a spectral weight's factors, spectra and moments live on one process, and
its owner runs the unchanged step on the all-reduced gradient. :func:`shard_optimizer` wraps a built optimizer
(``TensorGaLoreAdamW``, ``TensorGRaDAdamW``, ``torch.optim.AdamW``, ...); its param groups, with every option
(``galore``, ``name``, ``rank``, ...), become the wrapper's groups, and each local optimizer gets the same groups
restricted to its parameters (group indices are the same on every process).

What this module changes in torch's class, and why:

* **Partition by bytes of state.** torch sorts each group's parameters by ``numel`` and gives each to the process
  with the fewest elements so far, group by group. That is not bytes: a complex element is 8 bytes, a real one 4,
  and a projected spectral weight keeps core-shaped moments, a small fraction of its size. Here every parameter
  costs the optimizer-state bytes it will hold (:func:`app.memory_estimate.predict_param_state_bytes`, exact for
  these optimizers; the parameter's bytes for any other optimizer), and all parameters, across groups, are
  assigned largest first to the least-loaded process (:func:`balanced_partition`, which ``tgalore memory`` uses to
  predict the bytes per process).
* **Mixed real and complex parameters.** torch refuses parameters of different dense types, a restriction of its
  flat bucket views (``parameters_as_bucket_view``, not used here); an FNO has both. Parameters are broadcast one by
  one (``dist.broadcast`` handles complex tensors).
* **One copy of the state.** The wrapper's ``state`` *is* the local optimizer's, so state-byte counters
  (``app.memory.optimizer_state_bytes``, ``callbacks.memory.MemoryMonitor``) see this process's share; loading a
  checkpoint goes through the local optimizer's own ``load_state_dict`` (``TensorGaLoreAdamW`` keeps its state
  dtypes and host-side counters); the consolidated copy rank 0 gathers for a checkpoint is dropped once
  ``state_dict()`` has returned it.
* **Hooks inside the closure.** ``step(closure)`` evaluates the closure before torch's copy of the wrapper's group
  keys to the local optimizer, so what Lightning's ``on_before_optimizer_step`` hooks write (the subspace callback
  runs there) reaches the local optimizer in the same step.
* **Param-group names.** ``param_names`` stay per process (the local groups name their own parameters), so
  messages of the local optimizer name the right parameter; every other key is synced as torch does (wrapper ->
  local before each step, local -> wrapper after it).

Checkpoints: Lightning's ``Strategy.optimizer_state`` calls ``consolidate_state_dict`` on every process and saves
rank 0's ``state_dict()``, which has the format and indices of the unsharded optimizer's; so a checkpoint resumes on
any number of processes, sharded or not.

Not exact across sharding: ``TensorGRaDAdamW``'s random choices (``sparse_type="randk"``, stochastic rounding of
bfloat16 moments) are seeded by the parameter's position in *its* optimizer, which is the local one here, so they
draw other (equally valid) random numbers than an unsharded run or a run on another number of processes; resume on
the same number of processes stays exact. ``topk`` and ``nearest`` are exact.

Subspace controls (:class:`ShardedTensorGaLore`): the only control channel is param-group keys. Keys written on the
wrapper reach the local optimizers before the next step (torch's sync); keys written on a local optimizer would be
overwritten by that sync, so ``request_refresh``/``set_rank`` validate on the local optimizer and write the wrapper.
The read-only diagnostics (``subspace_stats``, ``captured_energy_now``, ``gradient_spectra``, ``state_bytes``) are
gathered from every process (``all_gather_object``, at the refresh and check steps where the callback reads them
anyway), so every process sees every layer, makes the same decisions, and rank 0 logs all of them.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from itertools import chain
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.optim import Optimizer

from app.memory import tensor_bytes
from app.memory_estimate import predict_param_state_bytes
from app.optim import TensorGaLoreAdamW

__all__ = ["balanced_partition", "state_bytes_per_process", "shard_optimizer", "ShardedOptimizer",
           "ShardedTensorGaLore", "local_optimizer"]


def balanced_partition(costs: Sequence[int], world_size: int) -> list[int]:
    """The owning process of each item: largest cost first, each to the least-loaded process (lowest index on
    ties), so every process computes the same partition."""
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r} is invalid: use an int >= 1")
    owner, load = [0] * len(costs), [0] * world_size
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += costs[i]
    return owner


def _state_costs(optimizer: Optimizer) -> list[int]:
    try:
        return predict_param_state_bytes(optimizer)
    except NotImplementedError:  # an optimizer without a state model: balance the parameters' bytes
        return [tensor_bytes(p) for g in optimizer.param_groups for p in g["params"]]


def state_bytes_per_process(optimizer: Optimizer, world_size: int) -> list[int]:
    """Predicted optimizer-state bytes of each of ``world_size`` processes when ``optimizer`` (unsharded, built on
    the whole model) is sharded by :func:`shard_optimizer`."""
    costs = _state_costs(optimizer)
    out = [0] * world_size
    for cost, rank in zip(costs, balanced_partition(costs, world_size), strict=True):
        out[rank] += cost
    return out


def shard_optimizer(optimizer: Optimizer, process_group: Any | None = None) -> ShardedOptimizer:
    """Wrap ``optimizer`` (built, with no state yet) so that each process of the (initialised) default process
    group, or of ``process_group``, holds the state of its share of the parameters."""
    if any(optimizer.state.values()):
        raise ValueError("shard_optimizer needs an optimizer that has not stepped yet (its state would be lost)")
    cls = ShardedTensorGaLore if isinstance(optimizer, TensorGaLoreAdamW) else ShardedOptimizer
    return cls(optimizer, process_group)


class ShardedOptimizer(ZeroRedundancyOptimizer):
    """``ZeroRedundancyOptimizer`` over ``type(optimizer)`` with ``optimizer``'s param groups (see the module
    docstring for what differs from torch's class). The local optimizer is :attr:`local`."""

    def __init__(self, optimizer: Optimizer, process_group: Any | None = None) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self._costs = dict(zip(map(id, params), _state_costs(optimizer), strict=True))
        accepted = inspect.signature(type(optimizer).__init__).parameters
        defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
        super().__init__(
            [dict(g) for g in optimizer.param_groups],  # complete groups: every option of the inner optimizer
            optimizer_class=type(optimizer),
            process_group=process_group,
            parameters_as_bucket_view=False,
            overlap_with_ddp=False,
            **defaults,
        )
        self.state = self.optim.state

    @property
    def local(self) -> Optimizer:
        """This process's optimizer: the state and the step of its share of the parameters."""
        return self.optim

    # ---------------------------------------------------------------------------- partition and types

    def _verify_same_dense_param_type(self) -> None:
        sparse = [torch.typename(p) for p in self._all_params if p.is_sparse]
        if sparse:
            raise ValueError(f"shard_optimizer_state supports dense parameters only, got {sparse[0]}")

    def _partition_parameters(self, params_per_rank=None):
        if params_per_rank is None and not self._partition_parameters_cache:
            costs = [self._costs.get(id(p), tensor_bytes(p)) for p in self._all_params]
            owner = dict(zip(map(id, self._all_params), balanced_partition(costs, self.world_size), strict=True))
            self._partition_parameters_cache = [[] for _ in range(self.world_size)]
            for group in self.param_groups:
                for rank, groups in enumerate(self._partition_parameters_cache):
                    mine = [i for i, p in enumerate(group["params"]) if owner[id(p)] == rank]
                    local = copy.copy(group)
                    local["params"] = [group["params"][i] for i in mine]
                    if "param_names" in group:
                        local["param_names"] = [group["param_names"][i] for i in mine]
                    groups.append(local)
        return super()._partition_parameters(params_per_rank)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "initialized", False):
            raise NotImplementedError(
                "a sharded optimizer cannot take a new param group after it is built (it would move parameters "
                "between processes); set model.shard_optimizer_state=false"
            )
        super().add_param_group(param_group)

    @staticmethod
    def _sync_param_groups(src_param_groups: list[dict], dst_param_groups: list[dict]) -> None:
        if len(src_param_groups) != len(dst_param_groups):
            raise AssertionError("Mismatch between number of source and destination parameter groups")
        for src, dst in zip(src_param_groups, dst_param_groups, strict=True):
            dst.update({k: v for k, v in src.items() if k not in ("params", "param_names")})

    def step(self, closure=None, **kwargs: Any):
        """Evaluate ``closure`` (forward, backward and, under Lightning, the ``on_before_optimizer_step`` hooks),
        then step: torch's class copies the wrapper's param-group keys to the local optimizer *before* the local
        optimizer calls the closure, so a key a hook writes there (an LR, a refresh request) would miss this step
        and be overwritten by the copy back after it. The closure is evaluated once, as the local optimizers of
        this project do at the start of their step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        super().step(**kwargs)
        return loss

    # ---------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        self._all_state_dicts = []  # the consolidated copy is the caller's now
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a full (consolidated or unsharded) optimizer state dict: this process's share goes to the local
        optimizer's ``load_state_dict``, the hyperparameters to every group."""
        saved_groups = state_dict["param_groups"]
        sizes = [len(g["params"]) for g in self.param_groups]
        saved_sizes = [len(g["params"]) for g in saved_groups]
        if sizes != saved_sizes:
            raise ValueError(
                f"loaded state dict has param groups of sizes {saved_sizes}, this optimizer {sizes}: it is the "
                f"state of another model or parameter split"
            )
        saved_id = {
            id(p): i
            for p, i in zip(chain.from_iterable(g["params"] for g in self.param_groups),
                            chain.from_iterable(g["params"] for g in saved_groups), strict=True)
        }
        local: dict[str, Any] = {"state": {}, "param_groups": []}
        for group, saved in zip(self.optim.param_groups, saved_groups, strict=True):
            ids = [saved_id[id(p)] for p in group["params"]]
            entry = {**saved, "params": ids}
            if "param_names" in group:
                entry["param_names"] = group["param_names"]
            else:
                entry.pop("param_names", None)
            local["param_groups"].append(entry)
            local["state"].update({i: state_dict["state"][i] for i in ids if i in state_dict["state"]})
        self.optim.load_state_dict(local)
        self.state = self.optim.state
        self._sync_param_groups(self.optim.param_groups, self.param_groups)

    # ---------------------------------------------------------------------------- helpers

    def _gather(self, entries: list) -> list:
        """Every process's ``entries``, concatenated in process order (a collective: call on every process)."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, entries, group=self.process_group)
        return [e for part in out for e in part]

    def _global_index(self, entries: list[dict]) -> list[dict]:
        """Entries with ``index`` into the local group turned into the index into the wrapper's group."""
        out = []
        for e in entries:
            p = self.optim.param_groups[e["group"]]["params"][e["index"]]
            index = next(i for i, q in enumerate(self.param_groups[e["group"]]["params"]) if q is p)
            out.append({**e, "index": index})
        return out

    def _gathered(self, entries: list[dict]) -> list[dict]:
        return sorted(self._gather(self._global_index(entries)), key=lambda e: (e["group"], e["index"]))


class ShardedTensorGaLore(ShardedOptimizer):
    """:class:`ShardedOptimizer` over ``TensorGaLoreAdamW`` (or ``TensorGRaDAdamW``) with its subspace controls and
    diagnostics, so ``callbacks.subspace.SubspaceScheduler`` works unchanged."""

    def _pairs(self, group_idx: int | None) -> list[tuple[dict, dict]]:
        pairs = list(zip(self.optim.param_groups, self.param_groups, strict=True))
        return pairs if group_idx is None else [pairs[group_idx]]

    def attach_policy(self, group_idx: int | None = None) -> None:
        """``TensorGaLoreAdamW.attach_policy`` on this process's local optimizer (the flag is not persisted and every
        process's callback attaches it alike; group indices are the same on every process)."""
        self.optim.attach_policy(group_idx)

    def detach_policy(self, group_idx: int | None = None) -> None:
        """``TensorGaLoreAdamW.detach_policy`` on this process's local optimizer."""
        self.optim.detach_policy(group_idx)

    def policy_attached(self, group_idx: int) -> bool:
        """``TensorGaLoreAdamW.policy_attached`` of this process's local optimizer."""
        return self.optim.policy_attached(group_idx)

    def request_refresh(self, group_idx: int | None = None) -> None:
        """``TensorGaLoreAdamW.request_refresh`` for the whole model (see the module docstring)."""
        self.optim.request_refresh(group_idx)  # validates group_idx
        for local, group in self._pairs(group_idx):
            # a process without parameters in the group has nothing to refresh; its local optimizer would keep the
            # request pending, and the wrapper's groups would then differ between processes
            local["refresh_pending"] = group["refresh_pending"] = bool(local["params"])

    def set_rank(self, rank: int | float | Sequence[int | float | None], group_idx: int | None = None) -> None:
        """``TensorGaLoreAdamW.set_rank`` for the whole model (validated against this process's parameters)."""
        self.optim.set_rank(rank, group_idx)
        for _, group in self._pairs(group_idx):
            group["rank"] = rank

    def subspace_stats(self, spectra: bool = False) -> list[dict[str, Any]]:
        """``TensorGaLoreAdamW.subspace_stats`` of every process's parameters (gathered)."""
        return self._gathered(self.optim.subspace_stats(spectra))

    def captured_energy_now(self) -> list[dict[str, Any]]:
        """``TensorGaLoreAdamW.captured_energy_now`` of every process's parameters (gathered)."""
        return self._gathered(self.optim.captured_energy_now())

    def gradient_spectra(self, group_idx: int | None = None) -> list[dict[str, Any]]:
        """``TensorGaLoreAdamW.gradient_spectra`` of every process's parameters (gathered; spectra on the CPU)."""
        entries = [
            {**e, "spectra": [None if s is None else s.cpu() for s in e["spectra"]]}
            for e in self.optim.gradient_spectra(group_idx)
        ]
        return self._gathered(entries)

    def state_bytes(self) -> dict[str, Any]:
        """Exact state bytes of the whole model: ``total``, ``groups`` (as unsharded) and ``processes`` (the
        bytes each process holds, in process order; gathered)."""
        mine = self.optim.state_bytes()
        parts = self._gather([mine["groups"]])
        groups = [sum(col) for col in zip(*parts, strict=True)]
        return {"total": sum(groups), "groups": groups, "processes": [sum(p) for p in parts]}


def local_optimizer(optimizer: Optimizer) -> Optimizer:
    """The optimizer that holds this process's state: ``optimizer`` itself, or a sharded optimizer's local one."""
    return optimizer.local if isinstance(optimizer, ShardedOptimizer) else optimizer

