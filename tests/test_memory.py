import torch
from torch import nn

from app.memory import adamw_state_bytes, memory_breakdown, optimizer_state_bytes


def test_adamw_accounting_matches_a_hand_count():
    w = nn.Parameter(torch.zeros(4, 3, dtype=torch.complex64))  # 12 complex elements = 96 bytes
    b = nn.Parameter(torch.zeros(5))  # 20 bytes
    model = nn.Module()
    model.w, model.b = w, b
    opt = torch.optim.AdamW(model.parameters())
    (w.abs().sum() + b.sum()).backward()
    opt.step()
    # AdamW: exp_avg + exp_avg_sq of each param's size and dtype, plus a 4-byte float32 step each
    expected_state = 2 * 96 + 4 + 2 * 20 + 4
    assert optimizer_state_bytes(opt) == expected_state
    assert adamw_state_bytes(model.parameters()) == expected_state
    mb = memory_breakdown(model, opt)
    assert (mb.params, mb.grads, mb.optimizer_state) == (116, 116, expected_state)
    assert mb.as_dict()["total"] == 116 + 116 + expected_state


def test_per_group_totals_sum_to_the_total():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2, 2))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b]}])
    (a.sum() + b.sum()).backward()
    opt.step()
    per = optimizer_state_bytes(opt, per_group=True)
    assert per == [2 * 12 + 4, 2 * 16 + 4] and sum(per) == optimizer_state_bytes(opt)


def test_missing_grads_count_zero():
    m = nn.Linear(2, 2)
    assert memory_breakdown(m).grads == 0
