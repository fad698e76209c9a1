"""The ``tgalore`` command line: LightningCLI over OperatorModule and any PDEDataModule.

    tgalore fit                                   # the default job (DEFAULT_CONFIGS below)
    tgalore fit -c configs/experiments/darcy_adamw.yaml
    tgalore fit --ckpt_path last                  # resume the newest run of this config, in its own directory
    tgalore test --ckpt_path best                 # evaluate that run's best checkpoint (or last, or a file)
    tgalore fit --print_config                    # the resolved configuration
    tgalore memory -c configs/paper/darcy.yaml    # predicted memory by category, AdamW vs the chosen optimizer

A user's mistake stops the command with ``error: <what, and the fix>`` and exit status 1, checked before anything
is written; ``TGALORE_TRACEBACK=1`` shows the traceback as well.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple

from jsonargparse import DefaultHelpFormatter, Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from app.module import OperatorModule
from app.resume import DATA_IDENTITY_KEY, data_differences, optimizer_differences
from datamodules.base import PDEDataModule

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
#: the default job, composed in this order (each file is one group of settings; -c files apply on top)
DEFAULT_CONFIGS = [
    CONFIG_DIR / "trainer" / "default.yaml",
    CONFIG_DIR / "model" / "fno2d.yaml",
    CONFIG_DIR / "optim" / "tensor_galore.yaml",
    CONFIG_DIR / "optim" / "cosine.yaml",
    CONFIG_DIR / "data" / "darcy.yaml",
]
SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: set to a non-empty value to see the traceback of a user error (``error: ...`` otherwise)
TRACEBACK_ENV = "TGALORE_TRACEBACK"

DESCRIPTION = """\
tgalore: train Fourier Neural Operators on PDE data with Tensor-GaLore (Adam whose moments live in a Tucker
subspace of each spectral weight's gradient), on PyTorch Lightning.

commands:
  fit        train; with no options the default job (an FNO on generated Darcy flow), then test the best
             checkpoint. `fit --ckpt_path last` resumes the newest run of the configuration
  validate   evaluate a checkpoint on the validation split (--ckpt_path last|best|<file>)
  test       evaluate a checkpoint on every test set (--ckpt_path last|best|<file>)
  predict    write predictions of a checkpoint (.pt and .png per batch; --ckpt_path last|best|<file>)
  memory     predicted training memory by category, AdamW vs the configured optimizer (`tgalore memory --help`)

`tgalore <command> --help` lists a command's options; `tgalore fit --print_config` prints the configuration.
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the description kept as written (it lists the commands)."""


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
            f"--ckpt_path last: no run under {root} has checkpoints/last.ckpt, so there is nothing to resume or "
            f"evaluate. Start a new run without --ckpt_path, or pass the path of a .ckpt file"
        )
    return max(candidates, key=lambda c: c.stat().st_mtime)


def resolve_best_checkpoint(save_dir: str, name: str | None) -> Path:
    """The best checkpoint of the newest run under ``<save_dir>/<name>``, as its ``last.ckpt`` records it (the
    checkpoint callback's ``best_model_path``)."""
    import torch

    last = resolve_last_checkpoint(save_dir, name)
    try:
        states = torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("callbacks", {})
    except Exception as err:  # a damaged last.ckpt: check_checkpoint_file says what is wrong with it
        raise ValueError(f"--ckpt_path best: the run's {last} cannot be read ({type(err).__name__})") from None
    recorded = [s.get("best_model_path") for s in states.values() if isinstance(s, dict) and "best_model_path" in s]
    recorded = [p for p in recorded if p]
    if not recorded:
        raise ValueError(
            f"--ckpt_path best: the newest run {last.parent.parent} has no best checkpoint: its checkpoint callback "
            f"monitors no metric (monitor: null) or has not validated yet. Use --ckpt_path last or a file from "
            f"{last.parent}"
        )
    for p in map(Path, recorded):
        for candidate in (p, last.parent / p.name):  # a relative path is relative to where the run was started
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"--ckpt_path best: the newest run {last.parent.parent} records {recorded[0]} as its best checkpoint, but "
        f"that file is gone. Use --ckpt_path last or a file from {last.parent}"
    )


_RESUME_KEYS = ("state_dict", "optimizer_states", "loops", "epoch", "global_step")


def _first_line(err: BaseException) -> str:
    """An exception's first line, without torch's advice to load untrusted files with ``weights_only=False``."""
    lines = [ln for ln in str(err).splitlines() if ln.strip() and "weights_only" not in ln]
    return lines[0] if lines else type(err).__name__


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
            f"--ckpt_path {path} cannot be read as a checkpoint ({type(err).__name__}: {_first_line(err)}): "
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


def check_save_dir(save_dir: str | os.PathLike) -> None:
    """Refuse a ``save_dir`` that cannot hold run directories (a file on its path, or not writable), without
    creating anything."""
    path = Path(save_dir).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(
            f"trainer.logger.init_args.save_dir={save_dir}: {existing} is a file, so no run directory can be made "
            f"there; choose another save_dir"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"trainer.logger.init_args.save_dir={save_dir}: {existing} is not writable; choose another save_dir"
        )


#: what every run writes when it starts: a run directory holding only these recorded nothing worth keeping
_START_FILES = re.compile(r"config(_resume\d+)?\.yaml|hparams\.yaml|events\.out\.tfevents\..*")


def _discard_run_dir(run_dir: Path) -> bool:
    """Remove ``run_dir`` if it holds nothing but the files every run writes at its start (and empty folders)."""
    if not run_dir.is_dir():
        return False
    files = [p for p in run_dir.rglob("*") if not p.is_dir()]
    if any(not _START_FILES.fullmatch(p.name) for p in files):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def _flat_keys(args: Any) -> list[str]:
    """The ``--model.*`` keys given on a command line (``--model.a.b=v`` or ``--model.a.b v``)."""
    if not isinstance(args, (list, tuple)):
        return []
    return [a[2:].split("=", 1)[0] for a in args if isinstance(a, str) and a.startswith("--model.")]


class TGaloreCLI(LightningCLI):
    """LightningCLI with tgalore's links and checks: resume in the checkpoint's own run directory, checkpoint /
    data / optimizer checks before anything is written, evaluation only of trained weights, test after fit, no run
    directory left by a run that failed before its first step, plain progress lines when stdout is no terminal."""

    _start_step = 0
    _run_dir: Path | None = None  # the run directory this run creates (None: it existed, or there is no logger)

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

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._args = sys.argv[1:] if args is None else args
        parser.cli_args = self._args  # TGaloreParser: a config that switches a class drops the earlier init_args
        super().parse_arguments(parser, args)

    # ------------------------------------------------------------------ --ckpt_path
    def _parse_ckpt_path(self) -> None:
        """Resolve and check ``--ckpt_path`` before anything is built. Evaluation needs one: ``validate``, ``test``
        and ``predict`` refuse to score freshly initialised weights. ``last`` and ``best`` are resolved from the
        configured run (``<save_dir>/<name>``). ``fit`` resumes the run this configuration describes (the model,
        data and optimizer are checked in ``before_fit``); the other subcommands evaluate the checkpoint's own
        model (Lightning's default), and say which ``--model.*`` options that ignores."""
        sub = self.config.get("subcommand")
        if sub not in SUBCOMMANDS:
            return
        cfg = self.config[sub]
        ckpt_path = cfg.get("ckpt_path")
        if sub != "fit" and not ckpt_path:
            raise ValueError(
                f"{sub} evaluates trained weights: give --ckpt_path last (the newest run of this configuration), "
                f"best (that run's best checkpoint) or the path of a .ckpt file; without it {sub} would score a "
                f"freshly initialised model"
            )
        if ckpt_path in ("last", "best"):
            tb = _logger_init_args(cfg.trainer)
            if tb is None:
                raise ValueError(
                    f"--ckpt_path {ckpt_path} looks for the run under the TensorBoard logger's save_dir/name, and "
                    f"this configuration has no TensorBoardLogger; pass the path of a .ckpt file"
                )
            if ckpt_path == "best" and sub == "fit":
                raise ValueError(
                    "fit --ckpt_path best would resume from an earlier point than the run reached and then overwrite "
                    "its later checkpoints; resume with --ckpt_path last, or start a new run"
                )
            resolve = resolve_last_checkpoint if ckpt_path == "last" else resolve_best_checkpoint
            cfg.ckpt_path = str(resolve(tb.save_dir, tb.get("name")))
            log.info("--ckpt_path %s: %s", ckpt_path, cfg.ckpt_path)
        if cfg.ckpt_path and cfg.ckpt_path not in ("hpc", "registry"):
            check_checkpoint_file(cfg.ckpt_path, sub)
        if sub == "fit":
            return
        given = _flat_keys(self._args)
        before = {k: cfg.get(k) for k in given}
        super()._parse_ckpt_path()
        ignored = [k for k in given if self.config[sub].get(k) != before[k]]
        if ignored:
            log.warning(
                "%s evaluates the checkpoint's own model, so these options are ignored: %s (the checkpoint's "
                "values: %s)", sub, ", ".join(f"--{k}" for k in ignored),
                ", ".join(f"{k}={self.config[sub].get(k)!r}" for k in ignored),
            )

    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        if sub not in SUBCOMMANDS:
            return
        cfg = self.config[sub]
        tb = _logger_init_args(cfg.trainer)
        if tb is not None:
            check_save_dir(tb.save_dir)
        ckpt = Path(cfg.ckpt_path) if cfg.get("ckpt_path") not in (None, "hpc", "registry") else None
        if sub != "fit" or tb is None or ckpt is None or ckpt.parent.name != "checkpoints":
            return
        # A resume continues in the checkpoint's own run directory, never in another run that has its version name.
        run_dir = ckpt.parent.parent
        if tb.get("version") is not None:
            configured = Path(tb.save_dir) / (tb.get("name") or "") / (
                tb.version if isinstance(tb.version, str) else f"version_{tb.version}"
            )
            if configured.resolve() != run_dir.resolve():
                raise ValueError(
                    f"--ckpt_path {ckpt} belongs to the run {run_dir}, but trainer.logger.init_args.version="
                    f"{tb.version} would continue it in {configured}; a resume continues in the checkpoint's own "
                    f"run directory: drop the version option"
                )
        if (Path(tb.save_dir) / (tb.get("name") or "")).resolve() != run_dir.parent.resolve():
            log.info("resuming the run %s (the checkpoint's own run directory)", run_dir)
        tb.save_dir, tb.name, tb.version = str(run_dir.parent.parent), run_dir.parent.name, run_dir.name
        self._keep_run_config(run_dir)

    def _keep_run_config(self, run_dir: Path) -> None:
        """A resumed run records its configuration next to the run's, never over it: ``config.yaml`` stays what the
        run was started with and each resume adds ``config_resume<k>.yaml``."""
        if not (run_dir / self.save_config_kwargs.get("config_filename", "config.yaml")).exists():
            return
        k = 1
        while (run_dir / f"config_resume{k}.yaml").exists():
            k += 1
        self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": f"config_resume{k}.yaml",
                                   "overwrite": False}

    # ------------------------------------------------------------------ checks before anything is written
    def before_fit(self) -> None:
        """Build the optimizer and LR schedule once (their options are checked now, not after data setup), and
        check a resumed checkpoint's model, data and optimizer against this configuration."""
        built = self.model.configure_optimizers()
        optimizer = built["optimizer"] if isinstance(built, dict) else built
        ckpt_path = self.config.fit.get("ckpt_path")
        if not ckpt_path or ckpt_path in ("hpc", "registry"):
            return
        import torch

        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        self._start_step = int(ckpt.get("global_step", 0))
        self.model.on_load_checkpoint(ckpt)  # the model: raises with the differences
        problems = data_differences(ckpt.get(DATA_IDENTITY_KEY), self.datamodule.identity()) if hasattr(
            self.datamodule, "identity") else []
        what = "other data than"
        if not problems:
            problems = optimizer_differences(ckpt, self.config.fit.model.get("optimizer"), optimizer.param_groups)
            what = "another optimizer than"
        if problems:
            raise ValueError(
                f"the checkpoint {ckpt_path} was trained with {what} this configuration describes:\n  "
                + "\n  ".join(problems) + "\nResume with the configuration it was trained with (the config.yaml in its "
                "run directory: `tgalore fit -c <run dir>/config.yaml --ckpt_path <checkpoint>`), or start a new run "
                "without --ckpt_path"
            )

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; on a failure, remove the run directory this run created if it holds nothing of value (no
        checkpoint, no prediction, and for ``fit`` no completed training step)."""
        log_dir = self.trainer.log_dir if self.trainer.logger is not None else None
        run_dir = Path(log_dir) if log_dir else None
        self._run_dir = run_dir if run_dir is not None and not run_dir.exists() else None
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            stepped = subcommand == "fit" and self.trainer.global_step > self._start_step
            if self._run_dir is not None and self.trainer.is_global_zero and not stepped:
                if _discard_run_dir(self._run_dir):
                    log.info("removed %s: the run failed before it recorded anything", self._run_dir)
            raise

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        """Lightning's trainer, with plain progress lines instead of a bar when stdout is not a terminal (unless
        the configuration names a progress bar itself)."""
        from lightning.pytorch.callbacks import ProgressBar

        from callbacks.progress import Bar, PlainProgressBar

        configured = [c for c in [*(config.get("callbacks") or []), *callbacks] if isinstance(c, ProgressBar)]
        if config.get("enable_progress_bar", True) is not False and not configured:
            callbacks = [*callbacks, Bar() if sys.stdout.isatty() else PlainProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    # ------------------------------------------------------------------ after fit
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


# ------------------------------------------------------------------ what each configuration source sets
def _relative(path: Path) -> str:
    path = Path(path)
    root = CONFIG_DIR.parent
    return str(path.resolve().relative_to(root)) if path.resolve().is_relative_to(root) else str(path)


def _load_yaml(path: str | Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}  # jsonargparse reports an unreadable config itself


def _option_value(text: str) -> Any:
    """An option's value as jsonargparse reads it: the contents of the config file it names, or YAML."""
    import yaml

    if Path(text).suffix in (".yaml", ".yml", ".json") and Path(text).is_file():
        return _load_yaml(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _is_option(token: str) -> bool:
    return token.startswith("-") and not re.fullmatch(r"-\.?\d.*", token)  # -1, -.5: values, not options


def config_sources(args: list[str] | dict | None) -> list[tuple[str, Any]]:
    """What each configuration source sets, in the order they apply, as ``(label, nested dict)``: the default
    config files, then the command line's ``-c``/``--config`` files and ``--key=value`` / ``--key value`` options
    (``--model.optimizer=ClassName`` included; the subcommand, ``--help``, ``--print_config`` and
    ``--<key>.help`` set nothing). A dict of arguments (``cli_main({...})``) is one source."""
    sources = [(_relative(f), _load_yaml(f)) for f in DEFAULT_CONFIGS if f.is_file()]
    if isinstance(args, dict):
        return [*sources, ("args", args)]
    args = list(args or [])
    i = 0
    while i < len(args):
        key, eq, value = args[i].partition("=")
        i += 1
        if not _is_option(key) or key in ("-h", "--help", "--print_config"):
            continue  # the subcommand (or a stray value)
        if not eq and i < len(args) and not _is_option(args[i]):
            value, i = args[i], i + 1
        if key in ("-c", "--config"):
            sources.append((_relative(Path(value)), _load_yaml(value)))
        elif key.startswith("--") and not key.endswith(".help"):
            tree = _option_value(value)
            for part in reversed(key[2:].split(".")):
                tree = {part: tree}
            sources.append((f"{key}={value}", tree))
    return sources


def same_class(a: str, b: str) -> bool:
    """Whether two class paths name one class; a short name (``TensorGRaDAdamW``) is the class of any full path
    ending in ``.TensorGRaDAdamW``."""
    import importlib

    if a == b or "." not in a or "." not in b:
        return a.rpartition(".")[2] == b.rpartition(".")[2]

    def resolve(path: str) -> Any:
        module, _, name = path.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name, path)
        except ImportError:
            return path

    return resolve(a) is resolve(b)


_ABSENT = object()


class ClassTrace(NamedTuple):
    """What the configuration sources do to one subclass-typed key (e.g. ``model.optimizer``)."""

    class_path: str | None  # the class they end with, as written
    switch: int | None  # the index of the source that last switched the class (None: never switched)
    earlier: tuple[str, str] | None  # the class before that switch, and the source that set it
    init_args: dict[str, tuple[Any, int]]  # each init_arg's last value, and the index of the source that set it


def trace_class(sources: list[tuple[str, Any]], key: str) -> ClassTrace:
    """Follow ``key`` through ``sources`` (``config_sources``): a ``class_path`` that differs from the class set
    before is a switch; ``null``/``false`` leaves no class (and nothing to carry over)."""
    cls, label, switch, earlier, init = None, "", None, None, {}
    for i, (source, tree) in enumerate(sources):
        value = tree
        for part in key.split("."):
            value = value.get(part, _ABSENT) if isinstance(value, dict) else _ABSENT
        if value is _ABSENT:
            continue
        if isinstance(value, str):
            value = {"class_path": value}
        if not isinstance(value, dict):
            cls, label, switch, earlier, init = None, "", None, None, {}
            continue
        new = value.get("class_path")
        if new and cls and not same_class(new, cls):
            switch, earlier = i, (cls, label)
        if new:
            cls, label = new, source
        given = {k: v for k, v in value.items() if k not in ("class_path", "init_args", "dict_kwargs")}
        given.update(value.get("init_args") or {})  # also the shorthand --model.optimizer.rank=0.2
        init.update({name: (v, i) for name, v in given.items()})
    return ClassTrace(cls, switch, earlier, init)


def drop_carried_init_args(parser: LightningArgumentParser, cfg: Namespace, sources: list, prefix: str = "") -> None:
    """Where a source switches a subclass key's class, reset in ``cfg`` every init_arg that no source at or after
    the switch sets to the new class's default: jsonargparse carries over those of the earlier class's values
    (its sources' and its own defaults) that the new class accepts. One warning per key names the values this
    changes. ``prefix``: the subcommand's (``"fit."``) or ``""``."""
    from jsonargparse._common import parser_context
    from jsonargparse._subcommands import find_action
    from jsonargparse._typehints import ActionTypeHint

    root = cfg.get(prefix[:-1]) if prefix else cfg
    keys = [k for k in root.keys(branches=True) if isinstance(root.get(k), Namespace) and "class_path" in root[k]]
    for key in keys:
        trace = trace_class(sources, key)
        value, action = root[key], find_action(parser, prefix + key)
        if trace.switch is None or not isinstance(action, ActionTypeHint) or not isinstance(
                value.get("init_args"), Namespace) or not same_class(value.class_path, trace.class_path):
            continue  # never switched, a nested key, or a value the sources do not explain
        with parser_context(parent_parser=parser):
            class_parser = ActionTypeHint.get_class_parser(value.class_path, getattr(action, "sub_add_kwargs", None))
            defaults = class_parser.get_defaults()
        kept = {n for n, (_, i) in trace.init_args.items() if i >= trace.switch}
        carried = [n for n in value.init_args.keys() if n not in kept and n in defaults]
        changed = [f"{n}={value.init_args[n]!r}" for n in carried if value.init_args[n] != defaults[n]]
        for name in carried:
            value.init_args[name] = defaults[name]
        if changed:
            (old, old_source), new_source = trace.earlier, sources[trace.switch][0]
            log.warning(
                "%s: the class changed from %s (%s) to %s (%s); dropped init_args carried over from the earlier "
                "class: %s; give them again after the switch to keep them", key, old, old_source, value.class_path,
                new_source, ", ".join(changed),
            )


class TGaloreParser(LightningArgumentParser):
    """LightningCLI's parser, where a config source that switches a subclass key's class drops the init_args only
    earlier sources set (``drop_carried_init_args``), after parsing and before ``--print_config`` prints."""

    #: the command line being parsed; set on the CLI's main parser only (``TGaloreCLI.parse_arguments``)
    cli_args: list[str] | dict | None = None

    def _parse_common(self, cfg: Namespace, env: bool | None, defaults: bool, skip_validation: bool,
                      **kwargs: Any) -> Namespace:
        # the main parser's final parse of the command line (default config files and -c files are parsed with
        # defaults=False); once, so not again where --ckpt_path merges a checkpoint's own model hyperparameters
        if self.cli_args is not None and defaults and not kwargs.get("nested_parse"):
            sources, self.cli_args, sub = config_sources(self.cli_args), None, cfg.get("subcommand")
            drop_carried_init_args(self, cfg, sources, f"{sub}." if sub else "")
        return super()._parse_common(cfg, env, defaults, skip_validation, **kwargs)


def optimizer_help_note(args: list[str]) -> str:
    """What ``--model.optimizer.help`` adds below the class's own defaults: the values the configuration sets."""
    i = args.index("--model.optimizer.help") if "--model.optimizer.help" in args else -1
    wanted = args[i + 1] if 0 <= i < len(args) - 1 else ""
    sources = config_sources(args)
    trace = trace_class(sources, "model.optimizer")
    kept = {n: (v, k) for n, (v, k) in trace.init_args.items() if k >= (trace.switch or 0)}
    lines = ["", "The defaults above are the class's own."]
    if trace.class_path and same_class(wanted or "?", trace.class_path):
        values = ", ".join(f"{n}={v!r}" for n, (v, _) in kept.items())
        setters = dict.fromkeys(sources[k][0] for _, k in kept.values())
        lines.append(f"This configuration sets ({', '.join(setters)}): {values}.")
    else:
        files = CONFIG_DIR.rglob("*.yaml")
        users = sorted(str(p.relative_to(CONFIG_DIR.parent)) for p in files if wanted and wanted in p.read_text())
        lines.append(f"Configs that use it: {', '.join(users) if users else 'none'}.")
    lines.append("`tgalore fit --print_config` shows every value in effect.")
    return "\n".join(lines)


def cli_main(args: list[str] | dict | None = None, run: bool = True) -> TGaloreCLI:
    """Entry point of ``tgalore`` and ``python -m app``; ``args`` lets tests drive it from Python."""
    if not logging.getLogger().handlers:  # the CLI owns the process: show our INFO messages (data generation)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Lightning 2.6 calls a torch API that torch 2.13 deprecated, once per step: noise for a user of the CLI.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    defaults = [str(p) for p in DEFAULT_CONFIGS if p.is_file()]
    if run:
        parser_kwargs: dict[str, Any] = {sub: {"default_config_files": defaults} for sub in SUBCOMMANDS}
        parser_kwargs.update(prog="tgalore", description=DESCRIPTION, formatter_class=_HelpFormatter)
    else:
        parser_kwargs = {"default_config_files": defaults}
    argv = sys.argv[1:] if args is None else args
    try:
        return TGaloreCLI(
            OperatorModule,
            PDEDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            parser_class=TGaloreParser,
            parser_kwargs=parser_kwargs,
            args=args,
            run=run,
        )
    except SystemExit as stop:
        if stop.code in (0, None) and isinstance(argv, list) and "--model.optimizer.help" in argv:
            print(optimizer_help_note(argv))
        raise


def _parse_bytes(text: str) -> int:
    """``24GB``, ``24GiB``, ``80 GB``, ``1.5TB``, ``512MiB`` or plain bytes -> bytes (GB and GiB both 2**30: how
    GPU memory is quoted)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", text, flags=re.I)
    if not m:
        raise SystemExit(f"tgalore memory: --gpu_memory {text!r} is not a size; give e.g. 24GB, 80GB or 16GiB")
    return int(float(m.group(1)) * 2 ** (10 * " KMGT".index(m.group(2).upper() or " ")))


def memory_main(args: list[str]) -> dict[str, dict[str, int]]:
    """``tgalore memory [config options] [--grid S ...] [--devices W] [--measure] [--gpu_memory 24GB] [--json]``:
    training memory by category for ``torch.optim.AdamW`` and for the configured optimizer and options, side by
    side: predicted without training, and with ``--measure`` also measured on two real training steps (torch's
    ``MemTracker``; on CUDA also the allocator's peak); with ``--devices W``, predicted per process of a W-process
    DDP run (the state divided by ``model.shard_optimizer_state``)."""
    import argparse
    import copy
    import dataclasses
    import json

    import torch

    from app.memory_estimate import estimate_memory
    from app.memory_measure import CATEGORIES, measure_training_steps, random_batch
    from app.module import checkpoint_fno_layers

    extra = argparse.ArgumentParser(prog="tgalore memory", add_help=False)
    extra.add_argument("--grid", type=int, nargs="+", help="spatial grid (default: the datamodule's resolution)")
    extra.add_argument("--measure", action="store_true",
                       help="also train two steps at the configured batch and grid and measure the peak by category")
    extra.add_argument("--gpu_memory", help="say whether the configuration fits in this much memory, e.g. 24GB")
    extra.add_argument("--json", action="store_true", help="print JSON instead of a table")
    extra.add_argument("--devices", type=int, default=1, help="DDP processes: predict the memory of each (default 1)")
    opts, rest = extra.parse_known_args(args)
    if "-h" in rest or "--help" in rest:
        extra.print_help()
        print("\nAll other options are those of `tgalore fit` (config files, --model.*, --data.*).")
        raise SystemExit(0)
    if opts.devices < 1:
        raise SystemExit(f"tgalore memory: --devices {opts.devices} is invalid; use the number of DDP processes (>= 1)")
    if opts.measure and opts.devices > 1:
        raise SystemExit("tgalore memory: --measure trains on this one process; it cannot measure a "
                         f"{opts.devices}-process run (drop --devices, or drop --measure for the prediction)")
    budget = _parse_bytes(opts.gpu_memory) if opts.gpu_memory else None
    with warnings.catch_warnings():  # "args given and sys.argv has more": the memory options are consumed here
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        cli = cli_main(rest, run=False)
    module, dm = cli.model, cli.datamodule
    if opts.devices > 1 and module.fused_update:
        raise SystemExit(
            f"tgalore memory: --devices {opts.devices} is DDP, which refuses model.fused_update=true (it would update "
            f"each parameter before DDP averages its gradient); add --model.fused_update false"
        )
    shard = module.shard_optimizer_state and opts.devices > 1
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
    # the baseline is plain AdamW, as --measure trains it: ordinary steps, no activation checkpointing
    if module.activation_checkpointing:
        checkpoint_fno_layers(module.model, enabled=False)
    try:
        plain_estimate = estimate_memory(module.model, baseline, shape, input_dtype=dtype)
    finally:
        if module.activation_checkpointing:
            checkpoint_fno_layers(module.model)
    estimates = {
        "AdamW": plain_estimate,
        name: estimate_memory(
            module.model, chosen, shape, fused_update=module.fused_update, input_dtype=dtype
        ),
    }
    if shard:  # the largest share of the state (app.sharding's partition); params and grads stay whole under DDP
        from app.sharding import state_bytes_per_process

        for (key, est), opt in zip(list(estimates.items()), (baseline, chosen), strict=True):
            share = max(state_bytes_per_process(opt, opts.devices))
            estimates[key] = dataclasses.replace(est, optimizer_state=share)
    rows = {key: est.as_dict() for key, est in estimates.items()}
    if opts.measure:
        from app.module import OperatorModule

        plain = checkpoint_fno_layers(copy.deepcopy(module.model), enabled=False) if module.activation_checkpointing \
            else copy.deepcopy(module.model)
        batch = random_batch(shape, dm.out_channels, dtype)
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
        print(json.dumps({"input_shape": list(shape), "devices": opts.devices, "sharded": shard, **rows}, indent=2))
        return rows
    (name_a, a), (name_b, b) = rows.items()
    per = ""
    if opts.devices > 1:
        per = f", per process of {opts.devices} (optimizer state {'sharded' if shard else 'replicated'})"
    what = "Predicted and measured" if opts.measure else "Predicted"
    lines = [f"{what} training memory, input {list(shape)} ({dtype}){per}, MiB", "",
             f"| category | {name_a} | {name_b} | ratio |", "|---|---:|---:|---:|"]
    keys = [k for k in a if k != "fits_gpu_memory"]
    if opts.measure:
        keys = [k for k in keys if not k.startswith("measured_")] + [f"measured_{c}" for c in CATEGORIES] + [
            "measured_peak_bytes"]
    for key in keys:
        ratio = b[key] / a[key] if a.get(key) else float("nan")
        lines.append(f"| {key} | {a[key] / 2**20:.2f} | {b[key] / 2**20:.2f} | {ratio:.3f} |")
    if opts.devices > 1:
        lines += ["", "Not counted: DDP's gradient buckets (about the gradients' size again, unless the strategy "
                  "sets gradient_as_bucket_view)."]
    if budget is not None:
        basis = "measured peak" if opts.measure else "predicted total (temporaries not included: leave ~10% spare)"
        lines.append("")
        lines += [f"{key}: {'fits' if ok else 'does NOT fit'} in {opts.gpu_memory} ({basis})"
                  for key, ok in verdicts.items()]
    print("\n".join(lines))
    return rows


#: torch's message for a file ``weights_only=True`` refuses, which advises loading it unsafely: never passed on
_TORCH_UNSAFE_ADVICE = re.compile(r"Weights only load failed\..*?torch\.load\.html\.?", re.S)


def user_message(err: BaseException) -> str:
    """The text of ``error: ...`` for a user's mistake (never advice to load an untrusted file unsafely)."""
    message = str(err).strip() or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and not message.startswith("--"):
        if message.startswith("[Errno"):  # the OS's own message: say which path
            message = f"{err.strerror or type(err).__name__}: {err.filename}"
    return _TORCH_UNSAFE_ADVICE.sub("not a file torch loads with weights_only=True", message)


def _user_errors() -> tuple[type[BaseException], ...]:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return (ValueError, TypeError, OSError, MisconfigurationException)  # OSError: FileNotFoundError, FileExistsError...


def main() -> None:
    """Console-script entry point (``tgalore``): exit status 0 on success; a user's mistake prints ``error: ...``
    (no traceback unless ``TGALORE_TRACEBACK`` is set) and exits with 1."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        if len(sys.argv) > 1 and sys.argv[1] == "memory":
            memory_main(sys.argv[2:])
            return
        cli_main()
    except SIGTERMException:  # Lightning saved a checkpoint (save_on_exception); exit as a terminated process
        log.warning("stopped by SIGTERM; resume with `--ckpt_path last`")
        raise SystemExit(143) from None  # 128 + SIGTERM: a scheduler must not read this as a finished job
    except _user_errors() as err:
        if os.environ.get(TRACEBACK_ENV):
            raise
        sys.stderr.write(f"error: {user_message(err)}\n(set {TRACEBACK_ENV}=1 to see where it was raised)\n")
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    main()
