"""bf16 on the CPU: whether this CPU computes it natively, and ``precision = auto`` decided by timing.

x86 CPUs with ``avx512_bf16`` (AMD Zen 4 on, Intel Cooper Lake) or AMX (Intel Sapphire Rapids on) run bf16
convolutions about twice as fast as fp32; elsewhere bf16 is emulated and slower than fp32. Which one a given
network runs faster still depends on its size and shape, so ``auto`` times a few batches of the run's own
network at both precisions and keeps bf16 only when it is clearly faster (``BF16_MARGIN``). The choice is
cached per CPU model, torch version, code revision and network shape in the user's cache folder, so only the
first run of a shape pays for the measurement. A CPU without native bf16 stays at fp32 without measuring.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from geo_sat2map import __version__
from geo_sat2map.atomic import atomic_output

log = logging.getLogger("geo_sat2map")

CACHE_ENV = "GEO_SAT2MAP_CACHE_DIR"
CACHE_FILE = "precision.json"
CACHE_VERSION = 1
# bf16 rounds to 8 significant bits: worth it only for a clear gain, not a tie within the timing noise of a
# few batches on a busy machine (5-10 %).
BF16_MARGIN = 1.15
NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")
X86 = ("x86_64", "amd64", "i386", "i686", "x86")


@dataclass(frozen=True)
class CpuChoice:
    """What ``auto`` chose on the CPU and why; ``seconds``: what measuring cost this call (0 when cached)."""

    precision: str  # "fp32" or "bf16"
    reason: str
    seconds: float = 0.0

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32


@functools.lru_cache(maxsize=None)
def _cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` line's value in /proc/cpuinfo (None where there is no such file or line)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith(name):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: macOS, Windows)."""
    return frozenset((_cpuinfo_field("flags") or "").split())


@functools.lru_cache(maxsize=1)
def native_bf16() -> str | None:
    """The instruction set that gives this CPU native bf16 (``avx512_bf16`` or ``amx_bf16``), else None.
    Only x86 with those flags counts: elsewhere (ARM, or no /proc/cpuinfo to tell) bf16 is treated as emulated."""
    if platform.machine().lower() not in X86:
        return None
    flags = cpu_flags()
    return next((flag for flag in reversed(NATIVE_FLAGS) if flag in flags), None)


def cpu_model() -> str:
    """The CPU's model name (part of the cache key: another CPU may choose otherwise)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cache_dir() -> Path:
    """$GEO_SAT2MAP_CACHE_DIR, else the platform's user cache folder (XDG_CACHE_HOME or ~/.cache on Linux,
    ~/Library/Caches on macOS, %LOCALAPPDATA% on Windows) / geo-sat2map."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "geo-sat2map" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "geo-sat2map"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "geo-sat2map"


# Per kind of measurement, bumped when the code it runs changes speed at either precision (e.g. how bf16 weights
# and norms run), so that choices measured on the old code are measured again, and only those.
MEASURED_CODE_REVISION = {"generator": 4, "train step": 2}


def cache_key(kind: str, shape: Mapping[str, Any]) -> str:
    """What decides the speed ratio: the CPU, torch, the code measured and the network's shape (not the thread
    count: the probe always runs on one thread, see ``measure_clock``)."""
    described = ", ".join(f"{key} {value}" for key, value in sorted(shape.items()))
    revision = MEASURED_CODE_REVISION.get(kind, 0)
    return f"{kind} | {cpu_model()} | torch {torch.__version__} | geo-sat2map {__version__} r{revision} | {described}"


def _read_cache(path: Path) -> dict[str, Any]:
    """The cached choices; a missing, unreadable or corrupt file counts as empty (it is rewritten)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.debug("ignoring the precision cache %s (%s)", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("choices"), dict):
        log.debug("ignoring the precision cache %s (not a version %d cache)", path, CACHE_VERSION)
        return {}
    return data["choices"]


def _write_cache(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Add ``entry`` (write-then-rename, so concurrent runs never see half a file); failing to is not an error."""
    choices = {**_read_cache(path), key: entry}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, overwrite=True, what="precision cache") as tmp:
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "choices": choices}, indent=1) + "\n",
                           encoding="utf-8")
    except Exception as exc:  # noqa: BLE001 - a read-only home must not stop a translate; it measures again next time
        log.debug("could not write the precision cache %s: %s", path, exc)


def measure_clock() -> float:
    """What the probes time with: the CPU time of the calling thread, torch running on that one thread. On a
    machine shared with other jobs, wall time measures the other jobs as much as the network (a 0.1 s call can
    take 2 s, and which precision that hits is chance); a thread's own CPU time does not count the time it
    waits, and one thread has no other thread to wait for. bf16's gain is per core, so one core tells it."""
    return time.thread_time()


def choose_on_cpu(
    kind: str, shape: Mapping[str, Any], measure: Callable[[], tuple[float, float]], unit: str
) -> CpuChoice:
    """``auto`` on the CPU for a network of ``shape``: fp32 without native bf16; otherwise the cached choice,
    or a new measurement (``measure()``: seconds per ``unit`` of the run's work at fp32 and at bf16, timed with
    ``measure_clock`` while torch runs on one thread)."""
    instructions = native_bf16()
    if instructions is None:
        return CpuChoice("fp32", "this CPU has no native bf16 (avx512_bf16 or AMX), so bf16 would be slower")
    path = cache_dir() / CACHE_FILE
    key = cache_key(kind, shape)
    entry = _read_cache(path).get(key)
    if isinstance(entry, dict) and entry.get("precision") in ("fp32", "bf16") and isinstance(entry.get("reason"), str):
        return CpuChoice(entry["precision"], f"{entry['reason']}; cached in {path}")
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see measure_clock
    try:
        fp32, bf16 = measure()
    finally:
        torch.set_num_threads(threads)
    fast = fp32 > BF16_MARGIN * bf16
    reason = (
        f"measured on this CPU ({instructions}): {bf16 * 1000:.0f} ms per {unit} at bf16 against {fp32 * 1000:.0f} ms "
        f"at fp32, {fp32 / bf16:.2f}x; bf16 is kept when over {BF16_MARGIN:g}x faster"
    )
    entry = {"precision": "bf16" if fast else "fp32", "reason": reason, "fp32_seconds": fp32, "bf16_seconds": bf16}
    _write_cache(path, key, entry)
    return CpuChoice(entry["precision"], reason, time.perf_counter() - started)
