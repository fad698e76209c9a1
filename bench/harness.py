"""Shared training and measurement code of the optimizer comparison (``python -m bench.tables``).

Every method trains the same network (``app.models.FNO`` inside ``app.module.OperatorModule``, whose
``configure_optimizers`` builds the parameter groups with ``app.param_groups.split_param_groups``) on the same data
(a ``datamodules`` ``PDEDataModule``: its normalised training split, validation split and test sets), from the same
initialisation per seed, with the same batches, learning rate, schedule and number of steps. The loop is plain
PyTorch rather than a Lightning ``Trainer`` so that each step can be timed on its own and nothing but the optimizer
differs between runs.

Measurements (all functions below the "accounting" line are unit-tested in ``tests/bench``):

* **accuracy**: mean per-sample relative L2 and H1 error of the final model on each test set (``app.metrics``);
* **memory**: exact bytes of parameters, gradients and optimizer state, tensor by tensor (``app.memory``); the
  state count also walks into non-tensor state entries (neuraloperator's ``AdamW`` keeps its projector, a Python
  object holding the factors, in its state) and is cross-checked against ``app.memory_estimate``;
* **time**: the median of whole training steps (zero_grad, forward, loss, backward, optimizer step), measured by
  :func:`time_methods` with all methods interleaved in one process on one fixed batch, so machine load affects
  every method alike; the extra time of a subspace refresh, measured by forcing refreshes, gives the refresh
  overhead share at the default ``update_proj_gap``;
* **peak RSS** of each training run (the kernel's high-water mark, reset before the run: ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import ctypes
import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from app.memory import tensor_bytes
from app.metrics import RelativeL2Loss, relative_h1, relative_l2

log = logging.getLogger("bench.harness")

REPO = Path(__file__).resolve().parent.parent
DEFAULTS_YAML = REPO / "configs" / "optim" / "tensor_galore.yaml"  # the default job's optimizer

__all__ = [
    "Hyper",
    "Method",
    "Prepared",
    "TestSet",
    "default_hyper",
    "main_methods",
    "sweep_methods",
    "tensorgrad_class",
    "deep_tensor_bytes",
    "optimizer_state_bytes_deep",
    "memory_row",
    "spectral_state_bytes",
    "kept_fraction",
    "rss_bytes",
    "reset_peak_rss",
    "release_freed_memory",
    "refresh_share",
    "mean_sd",
    "paired_relative_change",
    "train_run",
    "time_methods",
    "evaluate",
]


# ============================================================================================ accounting


def deep_tensor_bytes(obj: Any, _seen: set[int] | None = None) -> int:
    """Bytes of every distinct tensor reachable from ``obj`` through lists, tuples, dicts and plain objects'
    attributes (``__dict__``), each tensor counted once. Numbers and strings count 0."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        return tensor_bytes(obj)
    if isinstance(obj, (str, bytes, int, float, bool, complex, type(None))):
        return 0
    if isinstance(obj, dict):
        return sum(deep_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sum(deep_tensor_bytes(v, seen) for v in obj)
    if isinstance(obj, nn.Module):  # never part of an optimizer's state; do not count a model twice
        return 0
    attrs = getattr(obj, "__dict__", None)
    return sum(deep_tensor_bytes(v, seen) for v in attrs.values()) if attrs else 0


def optimizer_state_bytes_deep(optimizer: torch.optim.Optimizer) -> int:
    """Exact bytes of an optimizer's state: every tensor in ``optimizer.state``, including tensors held by
    objects stored there (equal to ``app.memory.optimizer_state_bytes`` for optimizers with plain-tensor state)."""
    seen: set[int] = set()
    return sum(deep_tensor_bytes(s, seen) for s in optimizer.state.values())


def memory_row(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Exact bytes of ``model``'s parameters, its current gradients and ``optimizer``'s state, and their total."""
    params = list(model.parameters())
    row = {
        "params": sum(tensor_bytes(p) for p in params),
        "grads": sum(tensor_bytes(p.grad) for p in params),
        "state": optimizer_state_bytes_deep(optimizer),
    }
    row["total"] = row["params"] + row["grads"] + row["state"]
    return row


def spectral_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Exact state bytes of ``model``'s spectral weights (the ``galore=True`` parameters of
    ``app.param_groups.split_param_groups``, whatever the optimizer does with them), next to what
    ``torch.optim.AdamW`` keeps for them (``adamw_spectral``) and for all parameters (``adamw_total``)."""
    from app.memory import adamw_state_bytes
    from app.param_groups import split_param_groups

    groups = split_param_groups(model)
    spectral = [p for g in groups if g["galore"] for p in g["params"]]
    seen: set[int] = set()
    return {
        "state_spectral": sum(deep_tensor_bytes(optimizer.state.get(p, {}), seen) for p in spectral),
        "adamw_spectral": adamw_state_bytes(spectral),
        "adamw_total": adamw_state_bytes(p for g in groups for p in g["params"]),
    }


def kept_fraction(model: nn.Module, optimizer: torch.optim.Optimizer) -> float | None:
    """Entries of the spectral weights' first moments over the spectral weights' entries (1 for full-tensor
    Adam, about the rank fraction for Tucker/GaLore projections); None before the optimizer's first step."""
    from app.param_groups import split_param_groups

    spectral = [p for g in split_param_groups(model) if g["galore"] for p in g["params"]]
    moments = [optimizer.state.get(p, {}).get("exp_avg") for p in spectral]
    if not spectral or any(m is None for m in moments):
        return None
    return sum(m.numel() for m in moments) / sum(p.numel() for p in spectral)


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> dict[str, int | None]:
    """This process's resident set now (``rss``) and its high-water mark (``peak``), bytes; None where the
    platform does not say (Linux ``/proc/self/status``: VmRSS, VmHWM)."""
    rss, peak = _status_kib("VmRSS"), _status_kib("VmHWM")
    return {"rss": None if rss is None else rss * 1024, "peak": None if peak is None else peak * 1024}


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


_LIBC: Any = None


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``) and make large blocks ``mmap``-ed (fixed
    threshold), so one run's peak RSS is not hidden by memory an earlier run freed; no-op elsewhere."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, disables the dynamic raise
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def refresh_share(step_s: float, refresh_extra_s: float, gap: int | None) -> float:
    """Share of training time spent refreshing subspaces when one step in ``gap`` costs ``refresh_extra_s`` more
    than an ordinary step of ``step_s``: ``extra / (gap * step + extra)``; 0 without refreshes."""
    if gap is None or refresh_extra_s <= 0:
        return 0.0
    return refresh_extra_s / (gap * step_s + refresh_extra_s)


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaN mean for no values."""
    v = [float(x) for x in values]
    if not v:
        return math.nan, math.nan
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0


def paired_relative_change(ours: Sequence[float], base: Sequence[float]) -> tuple[float, float]:
    """Relative change ``ours / base - 1`` per seed (paired: same seed, same data), its mean and sample sd."""
    if len(ours) != len(base):
        raise ValueError(f"paired values need equal lengths, got {len(ours)} and {len(base)}")
    return mean_sd(o / b - 1.0 for o, b in zip(ours, base, strict=True))


# ============================================================================================ methods


@dataclass(frozen=True)
class Hyper:
    """What every method shares: from the default job's optimizer (``configs/optim/tensor_galore.yaml``)."""

    lr: float = 5e-3
    weight_decay: float = 1e-4
    update_proj_gap: int | None = 200
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scale: float = 1.0  # of the back-projected update, for every projected method of ours
    proj_modes: tuple[int, ...] | None = None  # modes the Tucker path projects (None: all), for ours


def default_hyper(path: Path = DEFAULTS_YAML) -> Hyper:
    """lr, weight decay, ``update_proj_gap``, ``scale`` and ``proj_modes`` of the default job's optimizer
    (``configs/optim/tensor_galore.yaml``)."""
    cfg = yaml.safe_load(path.read_text())
    init = cfg["model"]["optimizer"]["init_args"]
    return Hyper(
        lr=float(init["lr"]),
        weight_decay=float(init.get("weight_decay", 0.0)),
        update_proj_gap=init.get("update_proj_gap", 200),
        scale=float(init.get("scale", 1.0)),
        proj_modes=None if init.get("proj_modes") is None else tuple(init["proj_modes"]),
    )


def tensorgrad_class() -> type | None:
    """TensorGRaD's optimizer class if ``app.optim`` exports one (a name containing "tensorgrad"), else None."""
    import app.optim as optim

    for name in getattr(optim, "__all__", dir(optim)):
        if "tensorgrad" in name.lower() and isinstance(getattr(optim, name, None), type):
            return getattr(optim, name)
    return None


@dataclass(frozen=True)
class Method:
    """One optimizer configuration. ``family``: ``torch`` (``torch.optim.AdamW``), ``neuralop``
    (``neuralop.training.AdamW`` with its Tensor-GaLore), ``ours`` (``app.optim.TensorGaLoreAdamW``) or
    ``tensorgrad`` (``app.optim``'s TensorGRaD, when it exists)."""

    key: str
    label: str
    family: str
    options: tuple[tuple[str, Any], ...] = ()
    spectral_galore: bool = True
    note: str = ""

    @property
    def rank(self) -> float | None:
        return dict(self.options).get("rank")

    def factory(self, hp: Hyper) -> Callable[[list[dict]], torch.optim.Optimizer]:
        opts = dict(self.options)
        common = dict(lr=hp.lr, betas=hp.betas, eps=hp.eps, weight_decay=hp.weight_decay)
        if self.family == "torch":
            return lambda groups: torch.optim.AdamW(groups, **common)
        if self.family == "ours":
            from app.optim import TensorGaLoreAdamW

            opts = {"scale": hp.scale, "proj_modes": hp.proj_modes, **opts}
            return lambda groups: TensorGaLoreAdamW(groups, update_proj_gap=hp.update_proj_gap, **common, **opts)
        if self.family == "neuralop":
            from neuralop.training import AdamW as NeuralopAdamW

            def make(groups: list[dict]) -> torch.optim.Optimizer:
                # neuraloperator's API: ordinary params first, the projected ones as ``galore_params`` (it adds
                # them as a group of its own); rank and refresh gap are optimizer attributes, not group keys.
                galore = [p for g in groups if g["galore"] for p in g["params"]]
                other = [p for g in groups if not g["galore"] for p in g["params"]]
                return NeuralopAdamW(
                    other,
                    galore_params=galore,
                    galore_rank=opts.get("rank", 0.25),
                    galore_update_proj_gap=hp.update_proj_gap,
                    **common,
                )

            return make
        if self.family == "tensorgrad":
            cls = tensorgrad_class()
            if cls is None:
                raise RuntimeError("app.optim exports no TensorGRaD optimizer")
            opts = {"scale": hp.scale, **opts}  # TensorGRaD's defaults project every mode (configs/optim)
            return lambda groups: cls(groups, update_proj_gap=hp.update_proj_gap, **common, **opts)
        raise ValueError(f"unknown method family {self.family!r}")


def _ours(key: str, label: str, note: str = "", spectral_galore: bool = True, **options: Any) -> Method:
    return Method(key, label, "ours", tuple(sorted(options.items())), spectral_galore, note)


def tensor_galore(rank: float, all_modes: bool = False) -> Method:
    """Tensor-GaLore at ``rank`` with the default job's ``proj_modes``, or projecting every mode (the paper's
    form) with ``all_modes``."""
    if all_modes:
        return _ours(
            f"tensor_galore_{rank:g}_all",
            f"Tensor-GaLore r={rank:g}, all modes",
            rank=rank,
            proj="tucker",
            proj_modes=None,
            note="every mode projected, as in the paper",
        )
    return _ours(f"tensor_galore_{rank:g}", f"Tensor-GaLore r={rank:g}", rank=rank, proj="tucker")


def galore_matrix(rollup: int, rank: float) -> Method:
    return _ours(f"galore_d{rollup}_{rank:g}", f"GaLore d={rollup} r={rank:g}", rank=rank, proj="matrix", rollup=rollup)


def main_methods(include_tensorgrad: bool = True) -> list[Method]:
    """The methods of the main tables, AdamW first (the reference of every ratio)."""
    methods = [
        Method("adamw", "AdamW (torch)", "torch"),
        Method(
            "neuralop_galore_0.25",
            "neuralop AdamW + Tensor-GaLore r=0.25",
            "neuralop",
            (("rank", 0.25),),
            note="neuraloperator 2.0's published implementation",
        ),
        _ours("complex_adamw", "complex AdamW (ours, no projection)", spectral_galore=False),
        galore_matrix(1, 0.25),
        galore_matrix(2, 0.25),
        galore_matrix(3, 0.25),
        tensor_galore(0.25),
        tensor_galore(0.25, all_modes=True),
        tensor_galore(0.5),
    ]
    cls = tensorgrad_class() if include_tensorgrad else None
    if cls is not None:
        import inspect

        sig = inspect.signature(cls).parameters
        rank, ratio = sig["rank"].default, sig["sparse_ratio"].default if "sparse_ratio" in sig else None
        label = f"TensorGRaD r={rank:g}" + (f" + {100 * ratio:g}% sparse" if ratio is not None else "")
        methods.append(Method("tensorgrad", label, "tensorgrad", note="app.optim.TensorGRaDAdamW, its defaults"))
    return methods


def sweep_methods(ranks: Sequence[float]) -> list[Method]:
    """The rank sweep (the paper's Table 2 layout): Tensor-GaLore and GaLore d=1,2,3 at each rank."""
    out = []
    for r in ranks:
        out += [tensor_galore(r), galore_matrix(1, r), galore_matrix(2, r), galore_matrix(3, r)]
    return out


# ============================================================================================ data


@dataclass
class TestSet:
    """A test set: ``x`` normalised with the training statistics, ``y`` in physical units."""

    __test__ = False  # not a pytest test class, despite its name

    name: str
    x: Tensor
    y: Tensor
    description: str = ""
    zero_shot: bool = False


@dataclass
class Prepared:
    """One dataset, ready to train on: tensors taken from a ``PDEDataModule`` after ``setup``."""

    key: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    tests: list[TestSet]
    y_mean: Tensor
    y_std: Tensor
    in_channels: int
    out_channels: int
    complex_data: bool
    periodic: bool
    model: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


def prepare(key: str, dm, *, model: dict[str, Any], periodic: bool, extra_tests: Sequence[TestSet] = ()) -> Prepared:
    """Generate or read ``dm``'s data and take its splits (inputs normalised by the datamodule)."""
    dm.prepare_data()
    dm.setup("fit")
    train, val = dm.train_dataloader().dataset, dm.val_dataloader().dataset
    loaders = dm.test_dataloader()
    loaders = loaders if isinstance(loaders, list) else [loaders]
    tests = [
        TestSet(name, loader.dataset.x, loader.dataset.y, zero_shot=i > 0)
        for i, (name, loader) in enumerate(zip(dm.test_names, loaders, strict=True))
    ]
    return Prepared(
        key=key,
        train_x=train.x,
        train_y=train.y,
        val_x=val.x,
        val_y=val.y,
        tests=tests + list(extra_tests),
        y_mean=torch.as_tensor(dm.y_mean),
        y_std=torch.as_tensor(dm.y_std),
        in_channels=dm.in_channels,
        out_channels=dm.out_channels,
        complex_data=bool(dm.complex_data),
        periodic=periodic,
        model=dict(model),
        info={"n_train": len(train.x), "n_val": len(val.x), "grid": list(train.x.shape[2:])},
    )


# ============================================================================================ training


def build(data: Prepared, method: Method, hp: Hyper, seed: int, total_steps: int):
    """The module (same initialisation for every method at a given seed), its optimizer and LR schedule."""
    from app.models import FNO
    from app.module import OperatorModule

    torch.manual_seed(seed)
    net = FNO(
        in_channels=data.in_channels, out_channels=data.out_channels, complex_data=data.complex_data, **data.model
    )

    def cosine(opt: torch.optim.Optimizer):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))

    module = OperatorModule(
        model=net,
        loss=RelativeL2Loss(),
        optimizer=method.factory(hp),
        scheduler=cosine,
        scheduler_interval="step",
        h1_periodic=data.periodic,
        spectral_galore=method.spectral_galore,
    )
    module.y_mean.copy_(data.y_mean.to(module.y_mean.dtype))
    module.y_std.copy_(data.y_std.to(module.y_std.dtype))
    conf = module.configure_optimizers()
    return module, conf["optimizer"], conf["lr_scheduler"]["scheduler"]


@torch.no_grad()
def evaluate(module: nn.Module, x: Tensor, y: Tensor, *, periodic: bool, chunk: int = 64) -> dict[str, float]:
    """Mean per-sample relative L2 and H1 errors of ``module`` (predicting physical units) on ``(x, y)``."""
    was_training = module.training
    module.eval()
    l2, h1 = [], []
    for i in range(0, len(x), chunk):
        pred, target = module(x[i : i + chunk]), y[i : i + chunk]
        l2.append(relative_l2(pred, target))
        h1.append(relative_h1(pred, target, periodic=periodic))
    module.train(was_training)
    return {"l2": torch.cat(l2).mean().item(), "h1": torch.cat(h1).mean().item()}


def _refresh_count(optimizer: torch.optim.Optimizer) -> int:
    """Subspace refreshes done so far (ours: the ``refreshes`` counters; others: 0)."""
    n = 0
    for state in optimizer.state.values():
        r = state.get("refreshes") if isinstance(state, dict) else None
        if isinstance(r, Tensor):
            n += int(r)
    return n


def predicted_state_bytes(optimizer: torch.optim.Optimizer) -> int | None:
    """``app.memory_estimate``'s prediction of the state, where it has a model of the optimizer."""
    from app.memory_estimate import predict_state_bytes

    try:
        return predict_state_bytes(optimizer)
    except NotImplementedError:
        return None


def train_run(data: Prepared, method: Method, hp: Hyper, seed: int, *, epochs: int, batch_size: int) -> dict[str, Any]:
    """Train ``method`` on ``data`` for ``epochs`` epochs from seed ``seed``; return the measurements."""
    n = len(data.train_x)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    release_freed_memory()
    module, opt, sched = build(data, method, hp, seed, total)
    order = torch.Generator().manual_seed(10_007 * seed + 1)
    have_peak = reset_peak_rss()
    rss0 = rss_bytes()["rss"]
    step_s: list[float] = []
    refresh_steps: list[int] = []
    curve: list[dict[str, float]] = []
    failure = None
    refreshes = 0
    start = time.perf_counter()
    step = 0
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=order)
        losses = []
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            x, y = data.train_x[idx], data.train_y[idx]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = module.loss_fn(module(x), y)
            loss.backward()
            try:
                opt.step()
            except FloatingPointError as err:  # TensorGaLoreAdamW's NonFiniteGradientError
                failure = f"non-finite gradient at step {step}: {err}"
            step_s.append(time.perf_counter() - t0)
            sched.step()
            if failure is None and not math.isfinite(loss.item()):
                failure = f"non-finite loss at step {step}"
            if failure:
                break
            now = _refresh_count(opt)
            if now != refreshes:
                refresh_steps.append(step)
                refreshes = now
            losses.append(loss.item())
            step += 1
        if failure:
            break
        val = evaluate(module, data.val_x, data.val_y, periodic=data.periodic)
        curve.append({"epoch": epoch + 1, "step": step, "train_loss": statistics.fmean(losses), "val_l2": val["l2"]})
    wall = time.perf_counter() - start
    rss = rss_bytes()
    mem = memory_row(module.model, opt)
    out: dict[str, Any] = {
        "dataset": data.key,
        "method": method.key,
        "seed": seed,
        "epochs": epochs,
        "steps": step,
        "failure": failure,
        "memory": mem,
        "state_predicted": predicted_state_bytes(opt),
        "spectral": spectral_state_bytes(module.model, opt),
        "kept_fraction": kept_fraction(module.model, opt),
        "step_s_median": statistics.median(step_s[1:]) if len(step_s) > 1 else None,
        "first_step_s": step_s[0] if step_s else None,
        "refresh_steps": refresh_steps,
        "wall_s": wall,
        "rss_start": rss0,
        "peak_rss": rss["peak"] if have_peak else None,
        "curve": curve,
        "tests": {},
    }
    if failure is None:
        for t in data.tests:
            out["tests"][t.name] = evaluate(module, t.x, t.y, periodic=data.periodic)
    return out


# ============================================================================================ timing


def _force_refresh(optimizer: torch.optim.Optimizer) -> Callable[[], None] | None:
    """A function that makes the next step refresh every subspace, and undoes any temporary change after it;
    None for optimizers without subspaces."""
    if hasattr(optimizer, "request_refresh"):
        if not any(g.get("galore") for g in optimizer.param_groups):
            return None
        return optimizer.request_refresh
    projectors = [s["projector"] for s in optimizer.state.values() if isinstance(s, dict) and "projector" in s]
    if not projectors:
        return None

    def neuralop_refresh() -> None:
        # TensorGaLoreProjector.project recomputes only when ``proj_tensor is None and step % gap == 0``
        for pr in projectors:
            pr._bench_gap = pr.update_proj_gap
            pr.proj_tensor, pr.update_proj_gap = None, 1

    return neuralop_refresh


def _undo_force(optimizer: torch.optim.Optimizer) -> None:
    for s in optimizer.state.values():
        pr = s.get("projector") if isinstance(s, dict) else None
        if pr is not None and hasattr(pr, "_bench_gap"):
            pr.update_proj_gap = pr._bench_gap
            del pr._bench_gap


def time_methods(
    data: Prepared,
    methods: Sequence[Method],
    hp: Hyper,
    *,
    batch_size: int,
    rounds: int,
    steps: int,
    refresh_repeats: int = 3,
    warmup: int = 3,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Median training-step time of every method, interleaved round-robin in this process on one fixed batch.

    Each round runs ``steps`` steps of every method (the order rotates between rounds). ``step_s`` is the median
    over all of a method's timed steps; ``ratio`` is the median over rounds of its mean step over AdamW's (the first
    method) in the same round, so a change of machine load between rounds cancels (``ratio_iqr``: the quartiles of
    those per-round ratios, the spread the load leaves). Then each method with subspaces
    runs ``refresh_repeats`` pairs (an ordinary step, then a step with a requested refresh); ``refresh_extra_s`` is
    the median difference within the pairs, and ``refresh_share`` the share of training time refreshes take at
    ``update_proj_gap`` (see :func:`refresh_share`). The optimizers are built without automatic refreshes, so
    no ordinary timed step includes one whatever ``rounds * steps``.
    """
    x, y = data.train_x[:batch_size], data.train_y[:batch_size]
    runs = {}
    no_auto_refresh = replace(hp, update_proj_gap=10**9)  # refreshes are timed separately, below
    for m in methods:
        module, opt, _ = build(data, m, no_auto_refresh, seed, 1)
        runs[m.key] = (module, opt)

    def one_step(module, opt) -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        module.loss_fn(module(x), y).backward()
        opt.step()
        return time.perf_counter() - t0

    for module, opt in runs.values():
        for _ in range(warmup):
            one_step(module, opt)
    times: dict[str, list[float]] = {m.key: [] for m in methods}
    per_round: dict[str, list[float]] = {m.key: [] for m in methods}
    keys = [m.key for m in methods]
    for r in range(rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            slot = [one_step(*runs[k]) for _ in range(steps)]
            times[k] += slot
            per_round[k].append(statistics.fmean(slot))
    out: dict[str, dict[str, Any]] = {}
    base = per_round[keys[0]]
    base_med = statistics.median(times[keys[0]])
    gap = hp.update_proj_gap
    for m in methods:
        module, opt = runs[m.key]
        med = statistics.median(times[m.key])
        ratios = [t / b for t, b in zip(per_round[m.key], base, strict=True)]
        ratio = statistics.median(ratios)
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratio] * 3
        entry: dict[str, Any] = {
            "step_s": med,
            "ratio": ratio,
            "ratio_iqr": [quartiles[0], quartiles[2]],
            "n": len(times[m.key]),
        }
        force = _force_refresh(opt)
        if force is not None:
            extra, refresh = [], []
            for _ in range(refresh_repeats):
                plain = one_step(module, opt)
                force()
                refresh.append(one_step(module, opt))
                _undo_force(opt)
                extra.append(refresh[-1] - plain)
            entry["refresh_step_s"] = statistics.median(refresh)
            entry["refresh_extra_s"] = max(statistics.median(extra), 0.0)
            entry["refresh_share"] = refresh_share(med, entry["refresh_extra_s"], gap)
            amortised = entry["refresh_extra_s"] / gap / base_med if gap else 0.0
            entry["ratio_with_refresh"] = ratio + amortised
        else:
            entry.update(refresh_step_s=None, refresh_extra_s=0.0, refresh_share=0.0, ratio_with_refresh=ratio)
        out[m.key] = entry
    return out


def quiet_lightning() -> None:
    """OperatorModule is used outside a Trainer here; silence the warnings that only make sense inside one."""
    warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
    warnings.filterwarnings("ignore", message=".*self.trainer.*")
