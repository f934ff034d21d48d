"""Resumable training state: ``checkpoint.pt`` and the random number generator states it carries.

Everything is plain data (tensors, numbers, strings, lists, dicts) so that it loads with
``torch.load(..., weights_only=True)``; RNG states are stored as tensors and lists, not pickled objects.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geo_sat2map.atomic import atomic_output
from geo_sat2map.checkpoint import read_torch_file
from geo_sat2map.errors import UserError

CHECKPOINT_FORMAT = "geo-sat2map-train-checkpoint"
CHECKPOINT_VERSION = 1
# What --resume reads from checkpoint.pt (beside the format header): a file that loads without one is damaged.
CHECKPOINT_FIELDS: dict[str, type] = {
    "config": dict, "epoch": int, "epoch_samples": int, "global_step": int, "model": dict, "history": list,
    "best": dict, "dataset_hash": str, "processes": list,
}


def capture_rng() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), numpy and python RNG states."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    body = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **payload}
    with atomic_output(path, overwrite=True, what="checkpoint") as tmp:
        torch.save(body, tmp)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A training checkpoint, loaded without unpickling code; UserError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path} not found: the run was killed before its first checkpoint (nothing to resume); "
            "start it again with --overwrite"
        )
    state = read_torch_file(path, "training checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a geo-sat2map training checkpoint")
    if not isinstance(state.get("format_version"), int) or state["format_version"] > CHECKPOINT_VERSION:
        raise UserError(f"{path}: checkpoint format {state.get('format_version')!r} is newer than this tool; upgrade")
    for key, kind in CHECKPOINT_FIELDS.items():
        if not isinstance(state.get(key), kind):
            raise UserError(
                f"{path}: damaged training checkpoint ({key!r} is missing or not a {kind.__name__}); "
                "start the run again with --overwrite"
            )
    return state
