"""Shared fixtures: small generators with random weights, and helpers to make real rasters."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from geo_sat2map.cpu_precision import CACHE_ENV
from geo_sat2map.models import build_generator


def randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights *and* BN running statistics, so every norm mode and every key matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if tensor.dtype.is_floating_point:
                if name.endswith("running_var"):
                    tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
                else:
                    tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.2)
    return net


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` run only where a CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def precision_cache(tmp_path_factory: pytest.TempPathFactory):
    """precision = auto on the CPU caches what it measured: in a folder of this session, never the user's."""
    folder = tmp_path_factory.mktemp("cache")
    saved = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = saved


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A small unet256 generator checkpoint (``translate_fixtures.save_small_generator``) for command tests."""
    from .translate_fixtures import save_small_generator  # that module imports this one

    return save_small_generator(tmp_path / "generator.pt")


@pytest.fixture
def small_unet() -> nn.Module:
    return randomise(build_generator("unet256", 8), seed=1)


@pytest.fixture
def small_seed() -> nn.Module:
    return randomise(build_generator("seed-unet", 8), seed=2)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
