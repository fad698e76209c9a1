from bench.memory_bench import cross_check, predicted_rows, render


def test_memory_bench_predicts_exactly_and_renders_a_table():
    for _, predicted, measured in cross_check():
        assert predicted == measured
    rows = predicted_rows(batch=2, grid=32)
    assert rows["Tensor-GaLore 0.25, fused"]["params+grads+state"] < rows["AdamW"]["params+grads+state"]
    table = render(rows, [], 2, 32)
    assert "| Tensor-GaLore 0.25, fused |" in table and "python -m bench.memory_bench" in table
