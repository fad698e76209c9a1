"""The out-of-the-box call is the measured best (issue 18): ``TensorGaLoreAdamW(split_param_groups(fno), lr=...,
rank=0.25)`` trains exactly like the settings of the defaults study (channel modes, gap 50, scale 1/sqrt(0.25)),
and state dicts saved before the new defaults keep their own values."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import yaml

from app.models import FNO
from app.optim import TensorGaLoreAdamW, TensorGRaDAdamW, group_layout
from app.param_groups import split_param_groups

REPO = Path(__file__).resolve().parents[2]
STUDIED = dict(proj_modes=[0, 1], update_proj_gap=50, scale=2.0, complex_norm="component")  # BENCHMARKS.md


def _fno():
    torch.manual_seed(0)
    return FNO(n_modes=(8, 8), in_channels=1, out_channels=1, hidden_channels=16, n_layers=2)


def _train(make, steps=60):
    model = _fno()
    opt = make(split_param_groups(model))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, 16, 16, generator=g)
    y = torch.sin(3 * x) + x.roll(1, dims=-1)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model, opt, losses


def test_the_plain_call_trains_exactly_like_the_studied_settings():
    kw = dict(lr=1e-3, weight_decay=1e-4, rank=0.25)
    plain, opt, losses = _train(lambda groups: TensorGaLoreAdamW(groups, **kw))
    studied, ref, _ = _train(lambda groups: TensorGaLoreAdamW(groups, **kw, **STUDIED))  # refreshes at 0 and 50
    for a, b in zip(plain.parameters(), studied.parameters(), strict=True):
        assert torch.equal(a, b)
    assert losses[-1] < 0.9 * losses[0]
    for ga, gb in zip(opt.param_groups, ref.param_groups, strict=True):
        for p, q in zip(ga["params"], gb["params"], strict=True):
            assert group_layout(p, ga) == group_layout(q, gb)
    spectral = [g for g in opt.param_groups if g["galore"]]
    assert spectral and all(s["ranks"][2:] == (None, None) for s in opt.subspace_stats())  # Fourier modes whole
    assert all(g["layout_modes"] == (0, 1) and g["proj_modes"] == "auto" for g in spectral)


def test_the_tensor_galore_config_carries_only_what_differs_from_the_defaults():
    init = yaml.safe_load((REPO / "configs/optim/tensor_galore.yaml").read_text())["model"]["optimizer"]["init_args"]
    assert set(init) <= {"lr", "weight_decay"}, init
    model = _fno()
    opt = TensorGaLoreAdamW(split_param_groups(model), **init)
    group = next(g for g in opt.param_groups if g["galore"])
    assert group_layout(group["params"][0], group) == group_layout(group["params"][0], {**group, **STUDIED})


def test_scale_auto_is_one_over_the_root_of_the_kept_fraction_per_parameter():
    p = torch.nn.Parameter(torch.zeros(6, 5, 4, dtype=torch.complex64))
    for rank in (0.25, 0.5, 1.0):
        auto = TensorGaLoreAdamW([q := torch.nn.Parameter(p.detach().clone())], galore=True, rank=rank)
        layout = group_layout(q, auto.param_groups[0])
        kept = torch.tensor(layout[1]).prod().item() / q.numel()
        fixed = TensorGaLoreAdamW(
            [r := torch.nn.Parameter(p.detach().clone())], galore=True, rank=rank, scale=kept**-0.5
        )
        q.grad = r.grad = torch.randn_like(p, generator=torch.Generator().manual_seed(2))
        auto.step()
        fixed.step()
        assert torch.equal(q, r), rank
    with pytest.raises(TypeError, match="scale=.big."):
        TensorGaLoreAdamW([p], scale="big")


def test_an_explicit_proj_modes_overrides_the_layout_of_split_param_groups():
    model = _fno()
    opt = TensorGaLoreAdamW(split_param_groups(model), proj_modes=None)  # the paper's form: every mode
    group = next(g for g in opt.param_groups if g["galore"])
    assert None not in group_layout(group["params"][0], group)[1]
    unknown = TensorGaLoreAdamW([torch.nn.Parameter(torch.zeros(6, 5, 4, 3, dtype=torch.complex64))], galore=True)
    assert None not in group_layout(unknown.param_groups[0]["params"][0], unknown.param_groups[0])[1]  # no layout


@pytest.mark.parametrize("cls", [TensorGaLoreAdamW, TensorGRaDAdamW])
def test_a_state_dict_saved_before_the_new_defaults_keeps_its_explicit_values(cls):
    """Old groups have no ``layout_modes`` and saved ``proj_modes=None, update_proj_gap=200, scale=1.0``."""
    p = torch.nn.Parameter(torch.randn(6, 5, 4, 3, dtype=torch.complex64))
    old = cls([p], galore=True, proj_modes=None, update_proj_gap=200, scale=1.0)
    p.grad = torch.randn_like(p)
    old.step()
    saved = old.state_dict()
    for group in saved["param_groups"]:
        del group["layout_modes"]  # a key the old code did not write
    buf = io.BytesIO()
    torch.save(saved, buf)
    buf.seek(0)
    q = torch.nn.Parameter(p.detach().clone())
    new = cls([q], galore=True)  # today's defaults: auto scale and modes, gap 50
    new.load_state_dict(torch.load(buf, weights_only=True))
    group = new.param_groups[0]
    assert (group["proj_modes"], group["update_proj_gap"], group["scale"]) == (None, 200, 1.0)
    assert group["layout_modes"] is None
    p.grad = q.grad = torch.randn_like(p, generator=torch.Generator().manual_seed(3))
    old.step()
    new.step()
    assert torch.equal(p, q)
