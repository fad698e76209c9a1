"""Numerical PDE solvers that generate training data."""
