import pytest

from bench.memory_bench import ROWS, render, run


@pytest.mark.slow
def test_memory_bench_measures_the_paper_model_and_renders_the_table():
    # the real paper model (138.6M parameters) at the smallest batch and grid: two rows, ~1 min, ~5 GiB
    rows = run(batch=1, grid=33, only=["AdamW", "+ bf16 moments"])
    adamw, best = rows["AdamW"], rows["+ bf16 moments"]
    assert best["measured"]["measured_peak_bytes"] < 0.5 * adamw["measured"]["measured_peak_bytes"]
    for r in rows.values():
        assert r["measured"]["max_by_category"]["params"] == r["estimate"]["params"]
        assert r["measured"]["max_by_category"]["optimizer_state"] == r["estimate"]["optimizer_state"]
    table = render(rows, 1, 33)
    assert "| + bf16 moments |" in table and "python -m bench.memory_bench" in table
    assert {label for label, _ in ROWS} >= set(rows)
