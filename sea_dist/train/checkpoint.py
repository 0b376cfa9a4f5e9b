"""Checkpoint files: plain state dicts, loaded with ``weights_only=True``.

A checkpoint holds tensors, numbers, strings and lists/dicts of them only, so loading one
never unpickles arbitrary objects (a checkpoint in shared storage is untrusted input).
"""
from __future__ import annotations

import os

import torch

CHECKPOINT_FILE = "state.pt"


def save_checkpoint(directory: str, state: dict) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CHECKPOINT_FILE)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated state.pt
    return path


def load_checkpoint(directory: str, map_location="cpu") -> dict:
    path = os.path.join(directory, CHECKPOINT_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {CHECKPOINT_FILE} in checkpoint directory {directory}")
    return torch.load(path, map_location=map_location, weights_only=True)
