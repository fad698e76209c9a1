"""The ``tgalore`` command line: LightningCLI over OperatorModule and any PDEDataModule.

    tgalore fit                                   # the default job: configs/defaults.yaml
    tgalore fit -c configs/experiments/darcy_adamw.yaml
    tgalore fit --ckpt_path last                  # resume the newest run of this config
    tgalore test --ckpt_path runs/darcy/version_0/checkpoints/last.ckpt
    tgalore fit --print_config                    # the resolved configuration
    tgalore memory -c configs/paper/darcy.yaml    # predicted memory by category, AdamW vs the chosen optimizer
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from app.module import OperatorModule
from datamodules.base import PDEDataModule

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "defaults.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _logger_init_args(trainer_cfg: Namespace) -> Namespace | None:
    logger = trainer_cfg.get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    if isinstance(logger, Namespace) and "TensorBoardLogger" in str(logger.get("class_path", "")):
        return logger.init_args
    return None


def _version_dirs(root: Path) -> list[Path]:
    return [p for p in root.glob("*") if p.is_dir()] if root.is_dir() else []


def resolve_last_checkpoint(save_dir: str, name: str | None) -> Path:
    """The newest ``last.ckpt`` among the runs ``<save_dir>/<name>/*/checkpoints/``."""
    root = Path(save_dir) / (name or "")
    candidates = [d / "checkpoints" / "last.ckpt" for d in _version_dirs(root)]
    candidates = [c for c in candidates if c.is_file()]
    if not candidates:
        raise FileNotFoundError(
            f"--ckpt_path last: no run under {root} has checkpoints/last.ckpt, so there is nothing to resume. "
            f"Start a new run without --ckpt_path, or pass the path of a .ckpt file"
        )
    return max(candidates, key=lambda c: c.stat().st_mtime)


_RESUME_KEYS = ("state_dict", "optimizer_states", "loops", "epoch", "global_step")


def check_checkpoint_file(path: str | Path, subcommand: str = "fit") -> None:
    """Fail clearly, before anything is built, on a ``--ckpt_path`` that is missing, empty, truncated, corrupt or
    not a Lightning checkpoint (one that ``fit`` can resume from, for ``fit``). Memory-maps the file and verifies
    the CRC-32 of every record (torch itself does not, so a damaged copy would load garbage): one read of the file.
    """
    import zipfile

    import torch

    path = Path(path)
    others = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path) if path.parent.is_dir() else []
    hint = f"; other checkpoints in {path.parent}: {others}" if others else ""
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path {path}: no such checkpoint file{hint}")
    if path.stat().st_size == 0:
        raise ValueError(f"--ckpt_path {path} is empty (0 bytes), not a checkpoint{hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several types for truncated, corrupt or foreign files
        raise ValueError(
            f"--ckpt_path {path} cannot be read as a checkpoint ({type(err).__name__}: {str(err).splitlines()[0]}): "
            f"it is truncated, corrupt or not a torch checkpoint{hint}"
        ) from None
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        damaged = f"({err})"
    if damaged is not None:
        raise ValueError(
            f"--ckpt_path {path} is corrupt: the checksum of its record {damaged} does not match (a damaged copy or "
            f"disk error){hint}"
        )
    needed = _RESUME_KEYS if subcommand == "fit" else ("state_dict",)
    missing = [k for k in needed if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        found = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        what = "a training checkpoint that fit can resume from" if subcommand == "fit" else "a Lightning checkpoint"
        raise ValueError(f"--ckpt_path {path} is not {what}: it has no {missing} (found {found}){hint}")


class TGaloreCLI(LightningCLI):
    """LightningCLI with tgalore's links and conveniences (resume of the same run dir, test after fit)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="fit only: evaluate the best checkpoint on the test set(s) when training ends",
        )
        # Values that follow from the data are linked, never copied between config files.
        for key in ("in_channels", "out_channels", "complex_data"):
            parser.link_arguments(f"data.{key}", f"model.model.init_args.{key}", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Check a given ``--ckpt_path`` file first. ``fit`` resumes the run this configuration describes: the
        checkpoint must hold that model (``OperatorModule.on_load_checkpoint`` says how it differs); Lightning's
        default would silently replace the configured model by the checkpoint's. Other subcommands keep that
        default, so ``tgalore test --ckpt_path x.ckpt`` evaluates the checkpoint's model without its config."""
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub in SUBCOMMANDS else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry"):
            check_checkpoint_file(ckpt_path, sub)
        if sub != "fit":
            super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        if sub not in SUBCOMMANDS:
            return
        cfg = self.config[sub]
        ckpt_path = cfg.get("ckpt_path")
        if not ckpt_path:
            return
        tb = _logger_init_args(cfg.trainer)
        if ckpt_path == "last":
            if tb is None:
                return  # let Lightning resolve it from ModelCheckpoint's dirpath
            ckpt = resolve_last_checkpoint(tb.save_dir, tb.get("name"))
            check_checkpoint_file(ckpt, sub)
            cfg.ckpt_path = str(ckpt)
            log.info("resuming from %s", ckpt)
        elif ckpt_path not in ("best", "hpc", "registry") and not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
        # A resumed fit keeps logging into the run directory its checkpoint came from.
        ckpt = Path(cfg.ckpt_path)
        if sub == "fit" and tb is not None and ckpt.parent.name == "checkpoints" and tb.get("version") is None:
            tb.version = ckpt.parent.parent.name
            self._keep_run_config(ckpt.parent.parent)

    def _keep_run_config(self, run_dir: Path) -> None:
        """A resumed run records its configuration next to the run's, never over it: ``config.yaml`` stays what the
        run was started with and each resume adds ``config_resume<k>.yaml`` (even one that then fails)."""
        if not (run_dir / self.save_config_kwargs.get("config_filename", "config.yaml")).exists():
            return
        k = 1
        while (run_dir / f"config_resume{k}.yaml").exists():
            k += 1
        self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": f"config_resume{k}.yaml"}

    def after_fit(self) -> None:
        if not self.config.fit.get("test_after_fit", True) or self.trainer.interrupted:
            return
        ckpt = "best" if getattr(self.trainer.checkpoint_callback, "best_model_path", "") else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt, verbose=True)
        if self.trainer.is_global_zero:
            self._print_summary()

    def _print_summary(self) -> None:
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}
        names = sorted({re.sub(r"^test/(l2|h1)_", "", k) for k in metrics})
        lines = ["", "Final test relative errors (best checkpoint):"]
        for n in names:
            l2, h1 = metrics.get(f"test/l2_{n}"), metrics.get(f"test/h1_{n}")
            lines.append(f"  {n:>10}:  L2 = {l2:.4f}   H1 = {h1:.4f}")
        lines.append(f"Run directory: {self.trainer.log_dir}")
        lines.append(f"TensorBoard:   tensorboard --logdir {Path(self.trainer.log_dir).parent}")
        print("\n".join(lines))  # the CLI's own report to the user


def cli_main(args: list[str] | dict | None = None, run: bool = True) -> TGaloreCLI:
    """Entry point of ``tgalore`` and ``python -m app``; ``args`` lets tests drive it from Python."""
    if not logging.getLogger().handlers:  # the CLI owns the process: show our INFO messages (data generation)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Lightning 2.6 calls a torch API that torch 2.13 deprecated, once per step: noise for a user of the CLI.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    defaults = [str(DEFAULT_CONFIG)] if DEFAULT_CONFIG.is_file() else []
    parser_kwargs = {sub: {"default_config_files": defaults} for sub in SUBCOMMANDS} if run else {
        "default_config_files": defaults
    }
    return TGaloreCLI(
        OperatorModule,
        PDEDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=parser_kwargs,
        args=args,
        run=run,
    )


def _parse_bytes(text: str) -> int:
    """``24GB``, ``24GiB``, ``80 GB``, ``1.5TB``, ``512MiB`` or plain bytes -> bytes (GB and GiB both 2**30: how
    GPU memory is quoted)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", text, flags=re.I)
    if not m:
        raise SystemExit(f"tgalore memory: --gpu_memory {text!r} is not a size; give e.g. 24GB, 80GB or 16GiB")
    return int(float(m.group(1)) * 2 ** (10 * " KMGT".index(m.group(2).upper() or " ")))


def memory_main(args: list[str]) -> dict[str, dict[str, int]]:
    """``tgalore memory [config options] [--grid S ...] [--measure] [--gpu_memory 24GB] [--json]``: training
    memory by category for ``torch.optim.AdamW`` and for the configured optimizer and options, side by side:
    predicted without training, and with ``--measure`` also measured on two real training steps (torch's
    ``MemTracker``; on CUDA also the allocator's peak)."""
    import argparse
    import copy
    import json

    import torch

    from app.memory_estimate import estimate_memory
    from app.memory_measure import CATEGORIES, measure_training_steps
    from app.module import checkpoint_fno_layers

    extra = argparse.ArgumentParser(prog="tgalore memory", add_help=False)
    extra.add_argument("--grid", type=int, nargs="+", help="spatial grid (default: the datamodule's resolution)")
    extra.add_argument("--measure", action="store_true",
                       help="also train two steps at the configured batch and grid and measure the peak by category")
    extra.add_argument("--gpu_memory", help="say whether the configuration fits in this much memory, e.g. 24GB")
    extra.add_argument("--json", action="store_true", help="print JSON instead of a table")
    opts, rest = extra.parse_known_args(args)
    if "-h" in rest or "--help" in rest:
        extra.print_help()
        print("\nAll other options are those of `tgalore fit` (config files, --model.*, --data.*).")
        raise SystemExit(0)
    budget = _parse_bytes(opts.gpu_memory) if opts.gpu_memory else None
    with warnings.catch_warnings():  # "args given and sys.argv has more": the memory options are consumed here
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        cli = cli_main(rest, run=False)
    module, dm = cli.model, cli.datamodule
    grid = opts.grid or [int(getattr(dm, "resolution", 0))] * dm.n_dims
    if not all(g > 0 for g in grid) or len(grid) != dm.n_dims:
        raise SystemExit(f"tgalore memory: give the {dm.n_dims}-D spatial grid with --grid (e.g. --grid 64 64)")
    shape = (dm.batch_size, dm.in_channels, *grid)
    dtype = torch.complex64 if dm.complex_data else torch.float32
    chosen = module.configure_optimizers()
    chosen = chosen["optimizer"] if isinstance(chosen, dict) else chosen
    baseline = torch.optim.AdamW(module.model.parameters())
    flags = (("fused", module.fused_update), ("checkpointing", module.activation_checkpointing))
    name = type(chosen).__name__ + "".join(f" ({flag})" for flag, on in flags if on)
    rows = {
        "AdamW": estimate_memory(module.model, baseline, shape, input_dtype=dtype).as_dict(),
        name: estimate_memory(
            module.model, chosen, shape, fused_update=module.fused_update, input_dtype=dtype
        ).as_dict(),
    }
    if opts.measure:
        from app.module import OperatorModule

        plain = checkpoint_fno_layers(copy.deepcopy(module.model), enabled=False) if module.activation_checkpointing \
            else copy.deepcopy(module.model)
        gen = torch.Generator().manual_seed(0)
        batch = {"x": torch.randn(shape, dtype=dtype, generator=gen),
                 "y": torch.randn((dm.batch_size, dm.out_channels, *grid), dtype=dtype, generator=gen)}
        accelerator = cli.trainer.accelerator.__class__.__name__.replace("Accelerator", "").lower() or "cpu"
        for key, mod in (("AdamW", OperatorModule(plain, loss=module.loss_fn)), (name, module)):
            measured = measure_training_steps(mod, batch, accelerator=accelerator, precision=cli.trainer.precision)
            rows[key].update({f"measured_{c}": v for c, v in measured.at_peak.items()})
            rows[key]["measured_peak_bytes"] = measured.peak
            if measured.cuda_max_allocated is not None:
                rows[key]["cuda_max_allocated"] = measured.cuda_max_allocated
            del mod
    verdicts = {}
    if budget is not None:
        for key, r in rows.items():
            need = r.get("cuda_max_allocated", r.get("measured_peak_bytes", r["total"]))
            verdicts[key] = need <= budget
            r["fits_gpu_memory"] = need <= budget
    if opts.json:
        print(json.dumps({"input_shape": list(shape), **rows}, indent=2))
        return rows
    (name_a, a), (name_b, b) = rows.items()
    what = "Predicted and measured" if opts.measure else "Predicted"
    lines = [f"{what} training memory, input {list(shape)} ({dtype}), MiB", "",
             f"| category | {name_a} | {name_b} | ratio |", "|---|---:|---:|---:|"]
    keys = [k for k in a if k != "fits_gpu_memory"]
    if opts.measure:
        keys = [k for k in keys if not k.startswith("measured_")] + [f"measured_{c}" for c in CATEGORIES] + [
            "measured_peak_bytes"]
    for key in keys:
        ratio = b[key] / a[key] if a.get(key) else float("nan")
        lines.append(f"| {key} | {a[key] / 2**20:.2f} | {b[key] / 2**20:.2f} | {ratio:.3f} |")
    if budget is not None:
        basis = "measured peak" if opts.measure else "predicted total (temporaries not included: leave ~10% spare)"
        lines.append("")
        lines += [f"{key}: {'fits' if ok else 'does NOT fit'} in {opts.gpu_memory} ({basis})"
                  for key, ok in verdicts.items()]
    print("\n".join(lines))
    return rows


def main() -> None:
    """Console-script entry point (``tgalore``): returns nothing, so the exit status is 0 on success."""
    import sys

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if len(sys.argv) > 1 and sys.argv[1] == "memory":
        memory_main(sys.argv[2:])
        return
    try:
        cli_main()
    except SIGTERMException:  # Lightning saved a checkpoint (save_on_exception); exit as a terminated process
        log.warning("stopped by SIGTERM; resume with `--ckpt_path last`")
        raise SystemExit(143) from None  # 128 + SIGTERM: a scheduler must not read this as a finished job


if __name__ == "__main__":  # pragma: no cover
    main()
