"""The memory estimator predicts exact parameter/gradient/state bytes and a sane activation count."""

import pytest
import torch

from app.memory import memory_breakdown
from app.memory_estimate import activation_bytes, estimate_memory
from app.models import FNO
from app.optim import TensorGaLoreAdamW
from app.param_groups import split_param_groups


def _model():
    torch.manual_seed(0)
    return FNO(n_modes=(8, 8), hidden_channels=16, n_layers=2)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: torch.optim.AdamW(m.parameters()),
        lambda m: torch.optim.Adam(m.parameters(), amsgrad=True),
        lambda m: TensorGaLoreAdamW(split_param_groups(m), rank=0.25),
        lambda m: TensorGaLoreAdamW(split_param_groups(m), rank=0.5, proj="matrix", rollup=2),
        lambda m: TensorGaLoreAdamW(split_param_groups(m), rank=(4, 8, 3, 2)),
    ],
    ids=["adamw", "adam-amsgrad", "tucker-0.25", "matrix-d2-0.5", "tucker-per-mode"],
)
def test_predicted_bytes_match_measured_bytes_within_1_percent(make):
    m = _model()
    opt = make(m)
    est = estimate_memory(m, opt, (2, 1, 16, 16))
    m(torch.randn(2, 1, 16, 16)).pow(2).mean().backward()
    opt.step()
    measured = memory_breakdown(m, opt)
    assert est.params == measured.params
    assert est.grads == measured.grads
    assert abs(est.optimizer_state - measured.optimizer_state) <= 0.01 * measured.optimizer_state


def test_activation_count_matches_autograd_saved_tensors_on_cpu():
    m = _model()
    x = torch.randn(3, 1, 16, 16)
    saved, keep = {}, []
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            saved[st.data_ptr()] = st.nbytes()
            keep.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x)
    assert activation_bytes(m, x.shape) == sum(saved.values())
    # linear in the batch size
    assert activation_bytes(m, (6, 1, 16, 16)) == pytest.approx(2 * activation_bytes(m, (3, 1, 16, 16)), rel=0.01)


def test_fused_updates_keep_only_the_largest_gradient():
    m = _model()
    est = estimate_memory(m, torch.optim.AdamW(m.parameters()), None, fused_update=True)
    assert est.grads == max(p.numel() * p.element_size() for p in m.parameters())


def test_memory_subcommand_prints_both_optimizers(capsys, tmp_path):
    from app.cli import memory_main

    rows = memory_main(
        ["--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}", "--model.fused_update=true", "--grid",
         "17", "17"]
    )
    assert set(rows) == {"AdamW", "TensorGaLoreAdamW (fused)"}
    out = capsys.readouterr().out
    assert "| optimizer_state |" in out and "[32, 1, 17, 17]" in out
    assert rows["TensorGaLoreAdamW (fused)"]["optimizer_state"] < 0.25 * rows["AdamW"]["optimizer_state"]


@pytest.mark.gpu
def test_activation_estimate_is_close_to_the_cuda_peak():
    m = _model().cuda()
    x = torch.randn(8, 1, 64, 64, device="cuda")
    opt = torch.optim.AdamW(m.parameters())
    est = estimate_memory(m, opt, x.shape)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    m(x).pow(2).mean().backward()
    peak = torch.cuda.max_memory_allocated() - base
    # saved activations are most of the forward/backward peak; FFT workspaces and temporaries add the rest
    assert est.activations <= peak <= 3 * est.activations + est.grads


@pytest.mark.parametrize("residual, proj_modes", [("none", None), ("scaled", None), ("none", (0, 1))])
def test_state_prediction_after_the_second_refresh_counts_the_drift_diagnostic_exactly(residual, proj_modes):
    from app.memory_estimate import predict_state_bytes

    m = _model()
    opt = TensorGaLoreAdamW(
        split_param_groups(m), rank=0.25, update_proj_gap=1, residual=residual, proj_modes=proj_modes
    )
    for _ in range(2):  # gap 1: both steps refresh
        opt.zero_grad()
        m(torch.randn(2, 1, 16, 16)).pow(2).mean().backward()
        opt.step()
    assert memory_breakdown(m, opt).optimizer_state == predict_state_bytes(opt, refreshes=2)
    assert predict_state_bytes(opt, refreshes=2) > predict_state_bytes(opt)
