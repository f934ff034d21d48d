"""Networks (torch only): the two generator families we load and the PatchGAN discriminator."""

from __future__ import annotations

from torch import nn

from geo_sat2map.models.inference import (
    NORM_MODES,
    InferenceGenerator,
    pack_convolutions_for_cpu,
    prepare_for_inference,
    with_low_precision_convolutions,
)
from geo_sat2map.models.patchgan import PatchGAN
from geo_sat2map.models.pix2pix_unet import Pix2PixUnet
from geo_sat2map.models.seed_unet import SeedUnet

ARCHITECTURES = ("unet256", "seed-unet")
# Architecture -> the norm mode that reproduces how its public weights were used at test time.
DEFAULT_NORM_MODE = {"unet256": "instance", "seed-unet": "running"}


def build_generator(arch: str, width: int = 64) -> nn.Module:
    """A freshly initialised generator of the named architecture; ``width`` is ngf / features."""
    if arch == "unet256":
        return Pix2PixUnet(ngf=width)
    if arch == "seed-unet":
        return SeedUnet(features=width)
    raise ValueError(f"unknown generator architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")


__all__ = [
    "ARCHITECTURES",
    "DEFAULT_NORM_MODE",
    "NORM_MODES",
    "InferenceGenerator",
    "PatchGAN",
    "Pix2PixUnet",
    "SeedUnet",
    "build_generator",
    "pack_convolutions_for_cpu",
    "prepare_for_inference",
    "with_low_precision_convolutions",
]
