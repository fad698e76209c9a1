"""The benchmark end to end in its tiny mode (two methods, one generated dataset, a few steps), and its pieces."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from bench import tables
from bench.harness import Prepared, TestSet


def _tables(markdown: str) -> list[list[str]]:
    """Every markdown table (a run of lines starting with '|') as its list of lines."""
    out, cur = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def test_tiny_mode_writes_a_well_formed_section_json_and_plots_and_keeps_other_sections(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    other = "<!-- optim-bench:start -->\nsomeone else's table\n<!-- optim-bench:end -->"
    md.write_text(f"# Benchmarks\n\n{other}\n")
    out = tmp_path / "results"
    assert (
        tables.main(["--tiny", "--data-dir", str(tmp_path / "data"), "--output", str(md), "--results-dir", str(out)])
        == 0
    )

    text = md.read_text()
    assert other in text  # untouched
    section = text[text.index(tables.START) : text.index(tables.END)]
    assert "python -m bench.tables --tiny" in section and "Hardware:" in section
    for table in _tables(section):
        cells = [len(re.findall(r"(?<!\\)\|", line)) for line in table]  # unescaped pipes
        assert len(set(cells)) == 1, table  # every row has the header's column count
        assert re.fullmatch(r"\|(---:?\|)+", table[1])
    assert "| AdamW (torch) |" in section and "| Tensor-GaLore r=0.25 |" in section

    res = json.loads((out / "tables_tiny.json").read_text())
    runs = [r for r in res["runs"] if r["method"] in ("adamw", "tensor_galore_0.25")]
    assert {(r["method"], r["seed"]) for r in runs} >= {(m, s) for m in ("adamw", "tensor_galore_0.25") for s in (0, 1)}
    for r in runs:
        assert r["failure"] is None
        assert r["memory"]["total"] == r["memory"]["params"] + r["memory"]["grads"] + r["memory"]["state"]
        assert all(0 < v["l2"] < 10 and 0 < v["h1"] < 10 for v in r["tests"].values())
    assert tables.state_of(res, "darcy_gen", "tensor_galore_0.25") < tables.state_of(res, "darcy_gen", "adamw")
    timing = res["timing"]["darcy_gen"]
    assert timing["adamw"]["ratio"] == 1.0 and timing["tensor_galore_0.25"]["refresh_step_s"] > 0
    for name in ("rank_sweep", "memory", "curves"):
        assert (out / f"tables_tiny_{name}.png").stat().st_size > 0
        assert f"tables_tiny_{name}.png" in section


def test_write_section_replaces_only_its_own_markers(tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# B\n\n<!-- a:start -->\nA\n<!-- a:end -->\n")
    tables.write_section(md, "first\n")
    tables.write_section(md, "second\n")
    text = md.read_text()
    assert text.count(tables.START) == 1 and "second" in text and "first" not in text
    assert text.startswith("# B\n\n<!-- a:start -->\nA\n<!-- a:end -->\n")


def test_verdict_calls_a_difference_only_beyond_two_standard_errors():
    assert tables.verdict(-0.10, 0.01, 3) == "better"
    assert tables.verdict(0.10, 0.01, 3) == "worse"
    assert tables.verdict(0.01, 0.05, 3) == "within noise"
    assert tables.verdict(math.nan, math.nan, 0) == "n/a"


class _FakeDM:
    """What neuralop_zero_shot reads from the datamodules: train outputs and the input (de)normalisation."""

    def __init__(self, train_y, x_mean=0.0, x_std=1.0):
        self._y, self.m, self.s = train_y, x_mean, x_std

    def train_dataloader(self):
        return type("L", (), {"dataset": type("D", (), {"y": self._y})()})()

    def encode_x(self, x):
        return (x - self.m) / self.s

    def decode_x(self, x):
        return x * self.s + self.m


def test_zero_shot_set_is_on_neuralops_grid_in_its_encoding_with_a_training_mean_scale():
    g = torch.Generator().manual_seed(0)
    a = torch.where(torch.rand(3, 1, 33, 33, generator=g) > 0.5, 12.0, 3.0)
    u = torch.rand(3, 1, 33, 33, generator=g)
    gen_train_y = torch.full((4, 1, 33, 33), 0.01)
    gen = Prepared(
        "darcy_gen",
        a,
        gen_train_y,
        a,
        u,
        [TestSet("res33", a, u)],
        torch.zeros(1),
        torch.ones(1),
        1,
        1,
        False,
        False,
        {},
    )
    theirs = _FakeDM(torch.full((5, 1, 16, 16), 0.7), x_mean=0.5, x_std=0.5)
    ts, info = tables.neuralop_zero_shot(theirs, gen, _FakeDM(None))
    assert ts.x.shape == (3, 1, 32, 32) and ts.zero_shot
    assert info["scale"] == pytest.approx(70.0)
    assert torch.equal(ts.x, ((a[..., :32, :32] > 7.5).float() - 0.5) / 0.5)  # x = 1 where a = 12, then encoded
    assert torch.allclose(ts.y, u[..., :32, :32] * info["scale"])
