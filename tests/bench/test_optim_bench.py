"""bench.optim_bench: the micro-benchmark's quick mode runs end to end (it had rotted once: a moved function)."""

from __future__ import annotations

import pytest

from bench import optim_bench


@pytest.mark.slow
def test_quick_mode_measures_one_shape_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "BENCHMARKS.md"
    assert optim_bench.main(["--quick", "--no-write", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| (64, 64, 32, 17) (47, 45, 22, 12) |" in text and "state bytes ÷ AdamW" in text
    assert not out.exists()
