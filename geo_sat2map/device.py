"""Device and precision selection shared by translate, train and evaluate."""

from __future__ import annotations

import functools
import logging

import torch

from geo_sat2map import cpu_precision
from geo_sat2map.errors import UserError

log = logging.getLogger("geo_sat2map")

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'; unavailable ones are a UserError."""
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: no CUDA device is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {spec}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_precision(spec: str, device: torch.device) -> torch.dtype:
    """The compute dtype asked for. 'auto' here is the choice that needs no measurement: bf16 on CUDA when
    supported, else fp32 (on the CPU, ``cpu_precision.choose_on_cpu`` measures). bf16 works on the CPU (with a
    warning where it is emulated); fp16 only on GPUs."""
    if spec == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if spec not in _DTYPES:
        raise UserError(f"--precision {spec!r}: expected auto, fp32, bf16 or fp16")
    dtype = _DTYPES[spec]
    if dtype == torch.float16 and device.type == "cpu":
        raise UserError("--precision fp16: half precision is only supported on a GPU; use bf16 or fp32 on CPU")
    if dtype == torch.bfloat16 and device.type == "cpu" and cpu_precision.native_bf16() is None:
        _warn_emulated_bf16()
    return dtype


@functools.lru_cache(maxsize=1)
def _warn_emulated_bf16() -> None:
    """Once per process: bf16 gives the bf16 result, but without native support it costs time, not saves it."""
    log.warning("--precision bf16: this CPU has no native bf16 (avx512_bf16 or AMX); bf16 is emulated and "
                "typically slower than fp32. Use --precision auto or fp32 for speed")


def precision_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]
