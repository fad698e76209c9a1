"""Reading and writing data files, with errors that name the file, the problem and the fix."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_pt", "save_pt_atomic", "check_keys"]


def load_pt(path: str | os.PathLike, what: str = "data file") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a dict, failing clearly on a missing, empty, corrupt or odd file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} {path} does not exist; check the path (a relative path starts at the working directory "
            f"{Path.cwd()})"
        )
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes); re-download or regenerate it")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        # Only torch's first line: the rest of its message advises unsafe loading (weights_only=False), which a
        # data file never needs and this tool never suggests.
        text = str(err)
        if "WeightsUnpickler error:" in text:  # torch's safe loader refused an object: keep only its reason
            tail = text.split("WeightsUnpickler error:", 1)[1]
            reason = next((ln.strip() for ln in tail.splitlines() if ln.strip()), "")
            text = f"it holds objects other than tensors: {reason}"
        first = next((line.strip() for line in text.strip().splitlines() if line.strip()), "")
        raise ValueError(
            f"{what} {path} could not be read by torch.load(weights_only=True) ({type(err).__name__}: {first}); the "
            f"file is corrupt, truncated or not a torch .pt file: re-download or regenerate it"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} {path} holds a {type(obj).__name__}; expected a dict of tensors")
    return obj


def save_pt_atomic(obj: Any, path: Path) -> None:
    """Write ``obj`` through a temporary file and a rename, so a crash never leaves half a file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_keys(obj: dict, keys: Sequence[str], source: str) -> None:
    """Raise if ``obj`` lacks any of ``keys``, listing what it has instead."""
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(
            f"{source} has no key(s) {missing}; found {sorted(map(str, obj))}; expected a dict with keys {list(keys)}"
        )
