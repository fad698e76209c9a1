"""``configs/paper/memory_saving.yaml`` as a user applies it (issue 19.6): composed with ``-c`` on a paper config, as
its header and the README say, through the CLI; and ``tgalore memory ... --gpu_memory 24GB`` with it."""

from __future__ import annotations

from pathlib import Path

import yaml

from app.cli import DEFAULT_CONFIGS, cli_main, memory_main
from app.module import CheckpointedChannelMLP, CheckpointedFNOBlocks
from app.optim import TensorGaLoreAdamW

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "configs" / "paper" / "darcy.yaml"
SAVING = REPO / "configs" / "paper" / "memory_saving.yaml"


def _stated(files, *keys):
    """The value the composed files give to ``keys`` (later files win, mappings merge), or {}."""
    out: dict = {}
    for f in files:
        node = yaml.safe_load(Path(f).read_text()) or {}
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            out.update(node)
    return out


def test_memory_saving_on_a_paper_config_gives_fused_updates_checkpointing_and_the_stated_optimizer(tmp_path):
    cli = cli_main(["-c", str(PAPER), "-c", str(SAVING), f"--trainer.default_root_dir={tmp_path}"], run=False)
    module = cli.model
    assert module.fused_update and not module.automatic_optimization  # each weight updated inside backward
    assert module.activation_checkpointing
    assert type(module.model.fno_blocks) is CheckpointedFNOBlocks
    assert type(module.model.lifting) is type(module.model.projection) is CheckpointedChannelMLP
    # the paper model itself is unchanged by the delta
    assert list(module.model.n_modes) == [64, 64] and module.model.hidden_channels == 128
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    files = [*DEFAULT_CONFIGS, PAPER, SAVING]
    stated = _stated(files, "model", "optimizer")
    assert stated["class_path"] == "app.optim.TensorGaLoreAdamW" and type(optimizer) is TensorGaLoreAdamW
    for key, value in stated["init_args"].items():
        assert optimizer.defaults[key] == value, key
    assert [g["galore"] for g in optimizer.param_groups].count(True) >= 1  # the spectral weights are projected
    for key, value in _stated([SAVING], "model").items():  # everything the delta states reached the module
        assert getattr(module, key) == value, key


def test_memory_command_with_memory_saving_says_the_paper_model_fits_24gb(tmp_path, capsys):
    args = ["-c", str(PAPER), "-c", str(SAVING), "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    rows = memory_main([*args, "--gpu_memory", "24GB"])
    name = "TensorGaLoreAdamW (fused) (checkpointing)"
    assert set(rows) == {"AdamW", name}
    saving, adamw = rows[name], rows["AdamW"]
    assert saving["fits_gpu_memory"] is True and saving["total"] <= 24 * 2**30
    # predicted at the paper's batch and grid (16 at 129x129); the baseline is plain AdamW (ordinary steps, no
    # checkpointing), as --measure trains it
    assert saving["params"] == adamw["params"]
    assert saving["grads"] < adamw["grads"] and saving["optimizer_state"] < adamw["optimizer_state"]
    assert saving["activations"] < adamw["activations"] / 2
    out = capsys.readouterr().out
    assert "input [16, 1, 129, 129]" in out and f"{name}: fits in 24GB (predicted total" in out
