"""The sliced spectral contraction and the lean FNO layer forward: same values and gradients as neuraloperator's,
one contiguous weight gradient (taken over by ``.grad`` without a copy), and the stock path where they do not apply."""

from functools import partial

import pytest
import torch
from neuralop.layers.spectral_convolution import SpectralConv, _contract_dense

from app import fno_memory
from app.fno_memory import contract_dense, install_sliced_contraction
from app.memory_measure import measure_training_steps
from app.models import FNO
from app.module import OperatorModule, checkpoint_fno_layers
from app.optim import TensorGaLoreAdamW


def _fno(complex_data=False, **kw):
    torch.manual_seed(0)
    return FNO(n_modes=(8, 8), hidden_channels=16, n_layers=3, complex_data=complex_data, **kw)


def _x(complex_data=False, b=3, g=20):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(b, 1, g, g, dtype=torch.complex64 if complex_data else torch.float32, generator=gen)


def _grads(model, x, seed=5):
    torch.manual_seed(seed)
    model(x).abs().pow(2).mean().backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.fixture(params=["one chunk", "chunked"])
def chunking(request, monkeypatch):
    if request.param == "chunked":  # a few modes per chunk (the paper's 264 MiB weights run ~22 chunks)
        monkeypatch.setattr(fno_memory, "CHUNK_BYTES", 3000)
    return request.param


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_contraction_and_its_gradients_equal_the_einsum(dims, chunking):
    gen = torch.Generator().manual_seed(0)
    modes = (5, 4, 3)[:dims]
    x = torch.randn(2, 6, *modes, dtype=torch.complex64, generator=gen).requires_grad_()
    w = torch.randn(6, 7, *modes, dtype=torch.complex64, generator=gen).requires_grad_()
    g = torch.randn(2, 7, *modes, dtype=torch.complex64, generator=gen)
    ref = _contract_dense(x, w)
    ref_gx, ref_gw = torch.autograd.grad(ref, (x, w), g)
    out = contract_dense(x, w)
    gx, gw = torch.autograd.grad(out, (x, w), g)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-6, atol=1e-6)
    assert gw.is_contiguous() and gx.is_contiguous()


def test_the_weight_gradient_becomes_grad_without_a_copy(chunking):
    conv = SpectralConv(4, 4, (6, 6))
    install_sliced_contraction(conv)
    seen = {}
    conv.weight.tensor.register_hook(lambda g: seen.setdefault("ptr", g.data_ptr()) and None)
    conv(torch.randn(2, 4, 12, 12)).pow(2).sum().backward()
    assert conv.weight.tensor.grad.data_ptr() == seen["ptr"]  # AccumulateGrad stole the buffer


@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("complex_data", [False, True], ids=["real", "complex"])
def test_fno_gradients_equal_neuraloperators(complex_data, ckpt, chunking):
    x = _x(complex_data)
    ref = _grads(_fno(complex_data, channel_mlp_dropout=0.1), x)
    model = _fno(complex_data, channel_mlp_dropout=0.1)
    assert install_sliced_contraction(model) == 3
    if ckpt:
        checkpoint_fno_layers(model)  # recomputed layers run the lean forward
    got = _grads(model, x)
    assert got.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("kw", [{}, {"preactivation": True}, {"norm": "group_norm"}, {"channel_mlp_skip": None},
                                {"fno_skip": None, "use_channel_mlp": False}],
                         ids=["default", "preactivation", "norm", "no-mlp-skip", "no-skips"])
def test_lean_layer_forward_is_bit_identical(kw):
    x = _x()
    stock = _fno(**kw)
    lean = checkpoint_fno_layers(_fno(**kw))
    with torch.no_grad():  # evaluation runs the layers' forward directly (no recomputation)
        torch.testing.assert_close(lean(x), stock(x), rtol=0, atol=0)
    ref, got = _grads(stock, x), _grads(lean, x)  # recomputed through the lean forward: the same autograd graph
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("complex_data", [False, True], ids=["real", "complex"])
def test_fused_training_with_checkpointing_matches_the_stock_contraction(complex_data, chunking):
    final = []
    for sliced in (False, True):
        mod = OperatorModule(_fno(complex_data), optimizer=partial(TensorGaLoreAdamW, rank=0.5, lr=1e-2),
                             fused_update=True, activation_checkpointing=True)
        convs = mod.model.fno_blocks.convs
        assert all(c._contract is contract_dense for c in convs)  # OperatorModule installs it
        if not sliced:
            for c in convs:
                c._contract = _contract_dense
        measure_training_steps(mod, {"x": _x(complex_data), "y": _x(complex_data)}, steps=2)
        final.append({k: v for k, v in mod.model.state_dict().items() if isinstance(v, torch.Tensor)})
    for n, p in final[0].items():
        torch.testing.assert_close(final[1][n], p, rtol=1e-5, atol=1e-6, msg=n)


def test_other_layouts_keep_neuraloperators_contraction():
    separable = SpectralConv(4, 4, (6, 6), separable=True)
    factorized = SpectralConv(4, 4, (6, 6), factorization="tucker", implementation="factorized")
    assert install_sliced_contraction(separable) == install_sliced_contraction(factorized) == 0
    # a call outside the handled layouts (half-precision spectra) falls back to the einsum
    x = torch.randn(2, 4, 6, 6, dtype=torch.complex64)
    w = torch.randn(4, 6, 6, dtype=torch.complex64)
    torch.testing.assert_close(contract_dense(x, w, separable=True), _contract_dense(x, w, separable=True))


def test_nothing_is_persisted():
    a, b = _fno(), _fno()
    install_sliced_contraction(b)
    assert a.state_dict().keys() == b.state_dict().keys()
    for k, v in a.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(b.state_dict()[k], v)
