import torch
from torch import nn

from app.param_groups import split_param_groups


def test_spectral_weights_get_their_own_galore_group(tiny_fno):
    groups = split_param_groups(tiny_fno)
    assert [g["galore"] for g in groups] == [True, True, False]  # one group per Fourier layer, then the rest
    assert [g["name"] for g in groups[:2]] == ["fno_blocks.convs.0.weight.tensor", "fno_blocks.convs.1.weight.tensor"]
    spectral = [p for g in groups[:2] for p in g["params"]]
    assert all(p.is_complex() and p.ndim == 4 for p in spectral)
    n_total = sum(1 for _ in tiny_fno.parameters())
    assert len(spectral) + len(groups[2]["params"]) == n_total


def test_complex_fno_keeps_complex_lifting_weights_out_of_the_galore_group():
    from neuralop.models import FNO

    m = FNO(n_modes=(4,), in_channels=1, out_channels=1, hidden_channels=4, n_layers=2, complex_data=True)
    groups = split_param_groups(m)
    spectral = [p for g in groups if g["galore"] for p in g["params"]]
    assert len(spectral) == 2 and all(p.ndim == 3 for p in spectral)
    other_complex = [p for p in groups[-1]["params"] if p.is_complex()]
    # whatever complex weights the lifting/projection have, none are classified as spectral
    assert all(id(p) not in {id(q) for q in spectral} for p in other_complex)


def test_model_without_spectral_layers_has_one_plain_group():
    groups = split_param_groups(nn.Linear(3, 2))
    assert len(groups) == 1 and groups[0]["galore"] is False


def test_torch_adamw_accepts_the_groups(tiny_fno):
    opt = torch.optim.AdamW(split_param_groups(tiny_fno), lr=1e-3)
    assert opt.param_groups[0]["galore"] is True
