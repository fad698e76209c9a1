import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset

from app.module import OperatorModule


class _Fields(Dataset):
    def __init__(self, n, s, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, s, s, generator=g)
        self.y = 5.0 + 2.0 * self.x.flip(-1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class _TinyData(LightningDataModule):
    """Stands in for a PDEDataModule: the attributes the module reads, nothing else."""

    def __init__(self, s=8):
        super().__init__()
        self.train, self.test = _Fields(16, s, 0), _Fields(8, s, 1)
        self.y_mean = self.train.y.mean().view(1)
        self.y_std = self.train.y.std().view(1)
        self.test_names = ["res8", "res8b"]
        self.resolutions = [(s, s)]

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=8)

    def val_dataloader(self):
        return DataLoader(self.test, batch_size=8)

    def test_dataloader(self):
        return [DataLoader(self.test, batch_size=8), DataLoader(self.test, batch_size=4)]


def test_fit_and_test_log_l2_and_h1_per_test_set(tiny_fno, cpu_trainer_kwargs):
    module, dm = OperatorModule(tiny_fno), _TinyData()
    trainer = Trainer(max_epochs=1, **cpu_trainer_kwargs)
    trainer.fit(module, datamodule=dm)
    torch.testing.assert_close(module.y_mean, dm.y_mean)
    (res_a, res_b) = trainer.test(module, datamodule=dm, verbose=False)
    bands = ("low", "mid", "high")  # app.metrics.BANDS, logged at test since issue 16
    assert set(res_a) == {"test/l2_res8", "test/h1_res8", *(f"test_band/{b}_res8" for b in bands)}
    assert set(res_b) == {"test/l2_res8b", "test/h1_res8b", *(f"test_band/{b}_res8b" for b in bands)}
    assert res_a["test/l2_res8"] == pytest.approx(res_b["test/l2_res8b"], rel=1e-5)


def test_checkpoint_loads_with_weights_only_and_has_no_neuralop_metadata(tiny_fno, cpu_trainer_kwargs, tmp_path):
    module, dm = OperatorModule(tiny_fno), _TinyData()
    trainer = Trainer(max_steps=2, **cpu_trainer_kwargs)
    trainer.fit(module, datamodule=dm)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert "_metadata" not in ckpt["state_dict"]
    assert "model" not in ckpt["hyper_parameters"]  # an nn.Module is not plain data
    from neuralop.models import FNO

    fresh = FNO(n_modes=(4, 4), in_channels=1, out_channels=1, hidden_channels=8, n_layers=2)
    restored = OperatorModule.load_from_checkpoint(path, model=fresh, weights_only=True)
    for (k, a), b in zip(module.state_dict().items(), restored.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_spectral_weights_reach_the_optimizer_flagged(tiny_fno):
    module = OperatorModule(tiny_fno, optimizer=lambda groups: torch.optim.AdamW(groups, lr=1e-2))
    opt = module.configure_optimizers()
    assert [g["galore"] for g in opt.param_groups] == [True, True, False]
    assert opt.param_groups[0]["lr"] == 1e-2


def test_scheduler_factory_is_wired_with_interval(tiny_fno):
    module = OperatorModule(
        tiny_fno,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1),
        scheduler_interval="step",
    )
    cfg = module.configure_optimizers()
    assert cfg["lr_scheduler"]["interval"] == "step"


def test_too_many_modes_for_the_grid_stops_before_training(tiny_fno, cpu_trainer_kwargs):
    module, dm = OperatorModule(tiny_fno), _TinyData(s=8)
    dm.resolutions = [(8, 8), (3, 3)]
    trainer = Trainer(max_epochs=1, **cpu_trainer_kwargs)
    with pytest.raises(ValueError, match=r"n_modes=\[4, 4\].*\[3, 3\].*at most \[3, 3\]"):
        trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 0


def test_channel_mismatch_between_model_and_data_is_reported(tiny_fno, cpu_trainer_kwargs):
    module, dm = OperatorModule(tiny_fno), _TinyData()
    dm.y_mean, dm.y_std = torch.zeros(2), torch.ones(2)
    with pytest.raises(ValueError, match="out_channels"):
        Trainer(max_epochs=1, **cpu_trainer_kwargs).fit(module, datamodule=dm)


def test_complex_fno_trains_on_complex_fields(cpu_trainer_kwargs):
    from neuralop.models import FNO

    class _ComplexData(_TinyData):
        def __init__(self):
            super().__init__()
            for ds in (self.train, self.test):
                ds.x = torch.complex(ds.x, ds.x.roll(1, -1))
                ds.y = torch.complex(ds.y, -ds.y)
            self.y_mean = self.train.y.mean().view(1)
            self.y_std = (self.train.y - self.y_mean).abs().pow(2).mean().sqrt().view(1)

    torch.manual_seed(0)
    fno = FNO(n_modes=(4, 4), in_channels=1, out_channels=1, hidden_channels=8, n_layers=2, complex_data=True)
    module, dm = OperatorModule(fno), _ComplexData()
    assert module.y_mean.is_complex()
    trainer = Trainer(max_epochs=2, **cpu_trainer_kwargs)
    trainer.fit(module, datamodule=dm)
    (res, _) = trainer.test(module, datamodule=dm, verbose=False)
    assert 0 < res["test/l2_res8"] < float("inf")


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_fused_updates_give_the_same_parameters_as_ordinary_steps(cpu_trainer_kwargs, interval):
    from neuralop.models import FNO

    def run(fused: bool):
        torch.manual_seed(0)
        fno = FNO(n_modes=(4, 4), in_channels=1, out_channels=1, hidden_channels=8, n_layers=2)
        module = OperatorModule(
            fno,
            optimizer=lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=1e-2),
            scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
            scheduler_interval=interval,
            fused_update=fused,
        )
        trainer = Trainer(max_epochs=3, **cpu_trainer_kwargs)
        trainer.fit(module, datamodule=_TinyData())
        return module, trainer

    (plain, t_plain), (fused, t_fused) = run(False), run(True)
    assert t_plain.global_step == t_fused.global_step == 6
    assert t_fused.optimizers[0].param_groups[0]["lr"] == t_plain.optimizers[0].param_groups[0]["lr"]
    for (k, a), b in zip(plain.state_dict().items(), fused.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)
    assert all(p.grad is None for p in fused.parameters())  # gradients were freed as they were used


def test_fused_updates_refuse_gradient_accumulation(tiny_fno, cpu_trainer_kwargs):
    module = OperatorModule(tiny_fno, fused_update=True)
    trainer = Trainer(max_epochs=1, accumulate_grad_batches=2, **cpu_trainer_kwargs)
    with pytest.raises(Exception, match="accumulat"):
        trainer.fit(module, datamodule=_TinyData())
