"""LightningDataModules for PDE datasets, on one shared base class (``datamodules.base.PDEDataModule``)."""

from datamodules.base import PDEDataModule
from datamodules.darcy import DarcyDataModule
from datamodules.em_wave import EMWaveDataModule

__all__ = ["PDEDataModule", "DarcyDataModule", "EMWaveDataModule"]
