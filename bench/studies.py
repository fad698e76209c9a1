"""What the accuracy benchmarks train: datasets, methods and studies, each a list of shipped config files plus a
YAML delta (issue 16). ``bench.tables`` runs them through the product (``bench.harness``) and writes the tables.

A method is an optimizer config of ``configs/optim/`` (or ``configs/bench/``) with at most a few overridden
``init_args``; a dataset is a shipped data/experiment config with the benchmark's batch size (and, for the small
studies, a smaller FNO). Every run of a study gets the same steps, seeds and cosine schedule
(``configs/bench/base.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from bench.harness import RunSpec, _merge

__all__ = ["Part", "Method", "Dataset", "Study", "STUDIES", "METHODS", "specs", "shrink"]


@dataclass(frozen=True)
class Part:
    """One side of a run, a dataset or a method: its key (in run names and the run cache), its label in the
    tables, the shipped config files it composes and the YAML delta over them (``specs`` merges both sides')."""

    key: str
    label: str
    configs: tuple[str, ...]
    delta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method(Part):
    """An optimizer config (``note``: what the row changes, for the tables)."""

    note: str = ""


@dataclass(frozen=True)
class Dataset(Part):
    """A data/experiment config with the benchmark's batch size (and model size); ``note``: said under its table."""

    note: str = ""


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    datasets: tuple[Dataset, ...]
    methods: tuple[Method, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 1000
    note: str = ""


def _opt(**init_args: Any) -> dict[str, Any]:
    return {"model": {"optimizer": {"init_args": init_args}}}


def tensor_galore(rank: float, all_modes: bool = False) -> Method:
    """``configs/optim/tensor_galore.yaml`` at ``rank``: channel modes (its ``proj_modes: [0, 1]``) or every mode."""
    if all_modes:
        return Method(
            f"tg_{rank:g}_all", f"Tensor-GaLore r={rank:g}, all modes", ("configs/optim/tensor_galore.yaml",),
            _opt(rank=rank, proj_modes=None), "every mode projected (the paper's form)",
        )
    return Method(
        f"tg_{rank:g}", f"Tensor-GaLore r={rank:g}, channel modes", ("configs/optim/tensor_galore.yaml",),
        _opt(rank=rank), "proj_modes [0, 1] (the shipped config)",
    )


def galore(d: int, rank: float) -> Method:
    return Method(f"galore_d{d}_{rank:g}", f"GaLore d={d} r={rank:g}", (f"configs/optim/galore_matrix_d{d}.yaml",),
                  _opt(rank=rank))


ADAMW = Method("adamw", "AdamW (torch)", ("configs/optim/adamw.yaml",))
METHODS: dict[str, Method] = {
    m.key: m
    for m in (
        ADAMW,
        Method("complex_adamw", "complex AdamW (ours, no projection)", ("configs/optim/complex_adamw.yaml",)),
        tensor_galore(0.25),
        tensor_galore(0.25, all_modes=True),
        Method("tensorgrad", "TensorGRaD r=0.2 + 5% sparse", ("configs/optim/tensorgrad.yaml",)),
        galore(1, 0.25),
        galore(2, 0.25),
        galore(3, 0.25),
        Method("neuralop_tg", "neuraloperator 2.0 Tensor-GaLore r=0.25", ("configs/bench/neuralop_tensor_galore.yaml",),
               note="neuralop.training.AdamW"),
    )
}

SMALL_FNO = {"model": {"model": {"init_args": {"n_modes": [8, 8], "hidden_channels": 16, "n_layers": 4}}}}


def _data(**init_args: Any) -> dict[str, Any]:
    return {"data": {"init_args": init_args}}


DARCY16 = "configs/experiments/darcy16_neuralop.yaml"
MAIN_BATCH = 8  # small, so that 1,000 steps stay fast on a CPU (the shipped configs use 16-32)
_ONE_D = ("1-D data: the spectral weights are 3-D (in, out, modes), so GaLore's `rollup: 3` is capped at 2 "
          "(`app.optim.layout.matrix_shape`): d=3 is d=2 with `scale: 2.0` stated instead of `auto`.")
MAIN_DATASETS = (
    Dataset("darcy16", "Darcy 16×16 (neuraloperator's set)", (DARCY16,), _data(batch_size=MAIN_BATCH)),
    Dataset("darcy_gen", "Darcy, generated (33×33; test 33 and zero-shot 65)", (), _data(batch_size=MAIN_BATCH)),
    Dataset("burgers", "Burgers, generated (128; test 128 and zero-shot 256)",
            ("configs/experiments/burgers_tensor_galore.yaml",), _data(batch_size=MAIN_BATCH), _ONE_D),
    Dataset("em", "EM wave, generated, complex (128; test 128 and zero-shot 256)", ("configs/experiments/em.yaml",),
            _data(batch_size=MAIN_BATCH), _ONE_D),
    Dataset("navier_stokes", "Navier–Stokes, generated (32×32; test 32 and zero-shot 64)",
            ("configs/experiments/navier_stokes_tensor_galore.yaml",), _data(batch_size=MAIN_BATCH)),
)


def _darcy_small(key: str, label: str, n_train: int, batch: int) -> Dataset:
    return Dataset(key, label, (DARCY16,), _merge(SMALL_FNO, _data(n_train=n_train, batch_size=batch)))


RANKS = (0.1, 0.25, 0.5, 1.0)
REG_RANKS = (0.1, 0.25, 0.5)

STUDIES: dict[str, Study] = {
    "regularisation": Study(
        "regularisation",
        "Do low-rank gradients regularise? Darcy 16×16 with 100 and 250 training samples",
        (
            # n_train samples are read; the last 10% are held out (unused: no model selection), leaving 100 / 250
            _darcy_small("darcy16_n100", "100 training samples", 111, 10),
            _darcy_small("darcy16_n250", "250 training samples", 278, 10),
        ),
        (ADAMW, *(tensor_galore(r) for r in REG_RANKS), *(tensor_galore(r, True) for r in REG_RANKS),
         METHODS["tensorgrad"]),
        note="FNO 4 layers, 16 channels, 8×8 modes (spectral weights (16, 16, 8, 5) complex), batch 10",
    ),
    "sweep": Study(
        "sweep",
        "Rank sweep on Darcy 16×16 (the layout of the paper's Table 2)",
        (_darcy_small("darcy16_small", "900 training samples", 1000, 16),),
        (ADAMW, *(m for r in RANKS for m in (tensor_galore(r), galore(1, r), galore(2, r), galore(3, r)))),
        note="FNO 4 layers, 16 channels, 8×8 modes, batch 16",
    ),
    "defaults": Study(
        "defaults",
        "Tensor-GaLore defaults: one setting changed per row (Darcy 16×16)",
        (_darcy_small("darcy16_defaults", "900 training samples", 1000, 32),),
        (),  # filled below (DEFAULTS_VARIANTS)
        note="FNO 4 layers, 16 channels, 8×8 modes, batch 32",
    ),
    "refresh_moments": Study(
        "refresh_moments",
        "What a subspace refresh does to the moments (`refresh_moments`), Darcy 16×16",
        (_darcy_small("darcy16_refresh", "900 training samples", 1000, 32),),
        (ADAMW, *(Method(f"tg_refresh_{rule}", f"Tensor-GaLore r=0.25, refresh_moments={rule}",
                         ("configs/optim/tensor_galore.yaml",), _opt(refresh_moments=rule))
                  for rule in ("keep", "project", "reset"))),
        note="FNO 4 layers, 16 channels, 8×8 modes, batch 32",
    ),
    "tensorgrad": Study(
        "tensorgrad",
        "TensorGRaD variants on Darcy 16×16",
        (Dataset("darcy16_tensorgrad", "900 training samples", (DARCY16,),
                 _merge({"model": {"model": {"init_args": {"n_modes": [8, 8], "hidden_channels": 32, "n_layers": 4}}}},
                        _data(batch_size=32))),),
        (),  # filled by bench.tensorgrad_bench.ROWS
        note="FNO 4 layers, 32 channels, 8×8 modes, batch 32",
    ),
    "main": Study(
        "main",
        "Every dataset, every method (shipped configs)",
        MAIN_DATASETS,
        tuple(METHODS.values()),
        note=f"the shipped dataset configs with batch {MAIN_BATCH}",
    ),
}


def _tg_variant(key: str, label: str, change: str, **init_args: Any) -> Method:
    return Method(key, label, ("configs/optim/tensor_galore.yaml",), _opt(**init_args), change)


_EVERY = {"proj_modes": None}
#: the defaults study (``bench.defaults_study``): (method, what changed), from the state before the defaults
DEFAULTS_VARIANTS: tuple[Method, ...] = (
    replace(ADAMW, note="reference"),
    Method("cadamw_element", "complex AdamW, element", ("configs/optim/complex_adamw.yaml",),
           _opt(complex_norm="element"), "paper's complex rule"),
    Method("cadamw_component", "complex AdamW, component", ("configs/optim/complex_adamw.yaml",),
           _opt(complex_norm="component"), "torch-sized complex steps"),
    _tg_variant("tg_element_200_1", "TG r=0.25, element, gap 200, scale 1, every mode", "before",
                complex_norm="element", update_proj_gap=200, scale=1.0, **_EVERY),
    _tg_variant("tg_component_200_1", "TG r=0.25, component, gap 200, scale 1, every mode", "complex rule",
                update_proj_gap=200, scale=1.0, **_EVERY),
    _tg_variant("tg_component_50_1", "TG r=0.25, gap 50, scale 1, every mode", "gap", scale=1.0, **_EVERY),
    _tg_variant("tg_component_50_2", "TG r=0.25, gap 50, scale 2, every mode", "scale", **_EVERY),
    _tg_variant("tg_component_50_3", "TG r=0.25, gap 50, scale 3, every mode", "larger scale", scale=3.0, **_EVERY),
    _tg_variant("tg_residual", "TG r=0.25, gap 50, scale 2, residual scaled", "Fira residual", residual="scaled",
                **_EVERY),
    _tg_variant("tg_channel_halves", "TG rank [0.5, 0.5, 1.0, 1.0] (Fourier modes rotated)", "which modes",
                rank=[0.5, 0.5, 1.0, 1.0], **_EVERY),
    _tg_variant("tg_proj_modes_2", "TG r=0.25, proj_modes [0, 1], gap 50, scale 2", "channel modes only (shipped)"),
    _tg_variant("tg_proj_modes_1", "TG r=0.25, proj_modes [0, 1], gap 50, scale 1", "scale, channel modes",
                scale=1.0),
    _tg_variant("tg_proj_modes_3", "TG r=0.25, proj_modes [0, 1], gap 50, scale 3", "larger scale, channel modes",
                scale=3.0),
    Method("adamw_lr1e-2", "AdamW (torch), lr 1e-2", ("configs/optim/adamw.yaml",), _opt(lr=0.01),
           "AdamW at 2x lr"),
    _tg_variant("tg05_every", "TG r=0.5, every mode, gap 50, scale 2", "rank", rank=0.5, **_EVERY),
    _tg_variant("tg01_every", "TG r=0.1, every mode, gap 50, scale 2", "rank", rank=0.1, **_EVERY),
    _tg_variant("tg01_proj_modes", "TG r=0.1, proj_modes [0, 1], gap 50, scale 2", "rank", rank=0.1),
)
STUDIES["defaults"] = replace(STUDIES["defaults"], methods=DEFAULTS_VARIANTS)
#: the studies ``python -m bench.tables`` runs and tabulates (the others belong to their own benchmark modules)
TABLES = ("regularisation", "sweep", "main")


def with_methods(study: Study, methods: tuple[Method, ...]) -> Study:
    return replace(study, methods=methods)


def specs(study: Study) -> list[RunSpec]:
    """Every run of ``study``: per dataset, per method, per seed."""
    out = []
    for d in study.datasets:
        for m in study.methods:
            for seed in study.seeds:
                delta = _merge(_merge(d.delta, m.delta), {
                    "seed_everything": seed,
                    "trainer": {"max_steps": study.steps},  # the LR schedule follows it (CosineToEnd)
                })
                out.append(RunSpec(study.name, d.key, m.key, seed, (*d.configs, *m.configs), delta))
    return out


TINY_DATA = Dataset(
    "tiny_darcy", "generated Darcy 9×9 (tiny)", ("configs/tests/tiny.yaml",),
    {"trainer": {"callbacks": []},
     "model": {"model": {"init_args": {"n_modes": [4, 4], "hidden_channels": 8, "n_layers": 2}}},
     "data": {"init_args": {"data_dir": "bench/out/data"}}},
)


def shrink(study: Study, mode: str, steps: int | None = None) -> Study:
    """``quick``: one seed, 20 steps, the first dataset; ``tiny`` (the test): two seeds, 3 steps, a tiny generated
    Darcy set and two methods (plus one GaLore row in the sweep)."""
    if mode == "full":
        return study if steps is None else replace(study, steps=steps)
    if mode == "quick":
        return replace(study, seeds=(0,), steps=steps or 20, datasets=study.datasets[:1])
    if mode == "tiny":
        keep = {"adamw", "tg_0.25", "galore_d1_0.25"}
        return replace(
            study, seeds=(0, 1), steps=steps or 3,
            datasets=tuple(replace(TINY_DATA, key=f"tiny_{d.key}", label=d.label) for d in study.datasets[:2]),
            methods=tuple(m for m in study.methods if m.key in keep),
        )
    raise ValueError(f"unknown mode {mode!r}")
