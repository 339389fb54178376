"""Checkpoint files: atomic writes of plain state (tensors and Python types only).

A checkpoint holds nothing that needs pickle's code execution to load, so it can be read
with `torch.load(..., weights_only=True)`; the config travels as YAML text.
"""

import os
from pathlib import Path

import torch

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"


def save_checkpoint(state: dict, path: Path) -> None:
    """Write `state` to `path` atomically: a crash mid-write never leaves a torn file.

    Args:
        state: tensors, state dicts and plain Python values.
        path: destination; its folder is created when missing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint safely (no arbitrary code runs while unpickling)."""
    return torch.load(path, map_location="cpu", weights_only=True)
