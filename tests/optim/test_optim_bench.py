"""The micro-benchmark writes only its own marked section of BENCHMARKS.md, and its quick mode runs end to end
(it had rotted once: a moved function)."""

import pytest

from bench import optim_bench
from bench.optim_bench import END, START, write_section


def test_section_is_created_then_replaced_without_touching_other_sections(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    write_section(path, "first\n")
    assert path.read_text().startswith("# Benchmarks") and f"{START}\nfirst\n{END}" in path.read_text()
    path.write_text(path.read_text() + "\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    write_section(path, "second\n")
    text = path.read_text()
    assert "first" not in text and f"{START}\nsecond\n{END}" in text and "keep me" in text
    assert text.count(START) == 1


@pytest.mark.slow
def test_quick_mode_measures_one_shape_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "BENCHMARKS.md"
    assert optim_bench.main(["--quick", "--no-write", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| (64, 64, 32, 17) (47, 45, 22, 12) |" in text and "state bytes ÷ AdamW" in text
    assert not out.exists()
