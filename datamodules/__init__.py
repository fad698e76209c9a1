"""LightningDataModules for PDE datasets, on one shared base class (``datamodules.base.PDEDataModule``)."""

from datamodules.base import PDEDataModule
from datamodules.darcy import DarcyDataModule

__all__ = ["PDEDataModule", "DarcyDataModule"]
