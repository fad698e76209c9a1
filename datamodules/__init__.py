"""LightningDataModules for PDE datasets, on one shared base class (``datamodules.base.PDEDataModule``)."""

from datamodules.base import PDEDataModule
from datamodules.burgers import BurgersDataModule
from datamodules.darcy import DarcyDataModule
from datamodules.em_wave import EMWaveDataModule
from datamodules.navier_stokes import NavierStokesDataModule
from datamodules.well import WellDataModule

__all__ = ["PDEDataModule", "BurgersDataModule", "DarcyDataModule", "EMWaveDataModule", "NavierStokesDataModule",
           "WellDataModule"]
