"""A config source that switches a subclass key's class drops the init_args that only earlier sources set, so the
new class's own defaults apply (jsonargparse alone keeps every earlier value the new class accepts)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from app.cli import cli_main, config_sources, trace_class

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "tests" / "tiny.yaml")


def _optimizer(tmp_path: Path, *args: str):
    cli = cli_main(["-c", TINY, f"--trainer.default_root_dir={tmp_path}", *args], run=False)
    return cli.config.model.optimizer


def _yaml(tmp_path: Path, optimizer: dict) -> str:
    path = tmp_path / "my_cfg.yaml"
    path.write_text(yaml.safe_dump({"model": {"optimizer": optimizer}}))
    return str(path)


def test_a_yaml_that_switches_the_optimizer_gets_the_new_classs_defaults_and_a_warning(tmp_path, caplog):
    cfg = _yaml(tmp_path, {"class_path": "app.optim.TensorGRaDAdamW", "init_args": {"lr": 0.001}})
    with caplog.at_level(logging.WARNING, logger="app.cli"):
        opt = _optimizer(tmp_path, "-c", cfg)
    assert opt.class_path == "app.optim.TensorGRaDAdamW"
    args = opt.init_args
    assert (args.lr, args.rank, args.sparse_ratio, args.weight_decay, args.update_proj_gap) == (0.001, 0.2, 0.05,
                                                                                                  0.0, 50)
    warnings = [r.getMessage() for r in caplog.records if "the class changed" in r.getMessage()]
    assert len(warnings) == 1, warnings
    message = warnings[0]
    assert message.startswith("model.optimizer: the class changed from app.optim.TensorGaLoreAdamW "
                              "(configs/tests/tiny.yaml) to app.optim.TensorGRaDAdamW (")
    for carried in ("rank=0.5", "sparse_ratio=0.0", "weight_decay=0.0001", "update_proj_gap=3"):
        assert carried in message
    assert "lr=" not in message  # given at the switch: kept, not dropped


def test_the_default_rank_is_named_when_the_switch_is_over_the_default_job(tmp_path, caplog):
    cfg = _yaml(tmp_path, {"class_path": "app.optim.TensorGRaDAdamW"})
    with caplog.at_level(logging.WARNING, logger="app.cli"):
        cli = cli_main(["-c", cfg, f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert cli.config.model.optimizer.init_args.rank == 0.2
    assert any("rank=0.25" in r.getMessage() and "configs/optim/tensor_galore.yaml" in r.getMessage()
               for r in caplog.records)


def test_values_given_at_or_after_the_switch_are_kept(tmp_path):
    cfg = _yaml(tmp_path, {"class_path": "TensorGRaDAdamW", "init_args": {"rank": 0.3}})
    args = _optimizer(tmp_path, "-c", cfg, "--model.optimizer.sparse_ratio=0.1").init_args
    assert (args.rank, args.sparse_ratio, args.lr) == (0.3, 0.1, 0.001)


def test_a_config_of_the_same_class_still_merges(tmp_path, caplog):
    cfg = _yaml(tmp_path, {"class_path": "app.optim.TensorGaLoreAdamW", "init_args": {"scale": 1.5}})
    with caplog.at_level(logging.WARNING, logger="app.cli"):
        args = _optimizer(tmp_path, "-c", cfg, "--model.optimizer=TensorGaLoreAdamW").init_args
    assert (args.scale, args.rank, args.update_proj_gap, args.lr) == (1.5, 0.5, 3, 0.005)  # tiny.yaml's kept
    assert not [r for r in caplog.records if "the class changed" in r.getMessage()]


@pytest.mark.parametrize("switch", [["--model.optimizer=TensorGRaDAdamW"],
                                    ["--model.optimizer.class_path", "app.optim.TensorGRaDAdamW"]])
def test_a_switch_on_the_command_line_keeps_the_options_after_it(tmp_path, switch):
    opt = _optimizer(tmp_path, *switch, "--model.optimizer.init_args.sparse_ratio=0.1")
    args = opt.init_args
    assert opt.class_path == "app.optim.TensorGRaDAdamW"
    assert (args.rank, args.sparse_ratio, args.weight_decay) == (0.2, 0.1, 0.0)


def test_an_option_before_the_switch_is_dropped(tmp_path):
    args = _optimizer(tmp_path, "--model.optimizer.init_args.rank=0.4", "--model.optimizer=TensorGRaDAdamW").init_args
    assert args.rank == 0.2


def test_the_shipped_tensorgrad_config_over_the_default_job_gives_its_rank_and_sparse_part(tmp_path):
    cli = cli_main(["-c", str(REPO / "configs" / "optim" / "tensorgrad.yaml"),
                    f"--trainer.default_root_dir={tmp_path}"], run=False)
    args = cli.config.model.optimizer.init_args
    assert (args.rank, args.sparse_ratio, args.scale, args.weight_decay) == (0.2, 0.05, 2.0, 0.0001)


def test_print_config_shows_the_new_classs_default(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--model.optimizer=TensorGRaDAdamW", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    args = printed["model"]["optimizer"]["init_args"]
    assert printed["model"]["optimizer"]["class_path"] == "app.optim.TensorGRaDAdamW"
    assert (args["rank"], args["sparse_ratio"], args["lr"]) == (0.2, 0.05, 0.001)


def test_the_trace_reads_every_form_of_a_source(tmp_path):
    cfg = _yaml(tmp_path, {"init_args": {"lr": 0.01}})
    sources = config_sources(["fit", "-c", cfg, "--model.optimizer", "TensorGRaDAdamW", "--model.optimizer.rank=0.3",
                              "--model.optimizer.help", "AdamW", "--print_config"])
    trace = trace_class(sources, "model.optimizer")
    assert trace.class_path == "TensorGRaDAdamW" and trace.earlier[0] == "app.optim.TensorGaLoreAdamW"
    assert sources[trace.switch][0] == "--model.optimizer=TensorGRaDAdamW"
    assert {n: v for n, (v, i) in trace.init_args.items() if i >= trace.switch} == {"rank": 0.3}
    assert "help" not in trace.init_args
