"""Generator checkpoints: our own format, public pix2pix state_dicts and the seed's ``gen.pth.tar``.

Everything is read with ``torch.load(..., weights_only=True)``: a file that needs arbitrary unpickling
(e.g. a whole module saved with ``torch.save(model)``) is refused, never executed.

Our format (``FORMAT_NAME``, version ``FORMAT_VERSION``) is a plain dict::

    {"format": "geo-sat2map-generator", "format_version": 1,
     "metadata": {arch, width, norm_mode, bands, band_roles, scaling, tile_size, resolution, resolution_m, crs_kind, provenance, palette},
     "state_dict": {...}}
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyproj
import torch
from torch import nn

from geo_sat2map.atomic import atomic_output, file_sha256
from geo_sat2map.errors import CheckpointError, UserError, first_line
from geo_sat2map.models import ARCHITECTURES, DEFAULT_NORM_MODE, NORM_MODES, InferenceGenerator, build_generator
from geo_sat2map.palette import Palette
from geo_sat2map.scaling import InputScaling

FORMAT_NAME = "geo-sat2map-generator"
FORMAT_VERSION = 1
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# The first weight of each family: identifies the layout and gives its width.
_FIRST_WEIGHT = {"unet256": "model.model.0.weight", "seed-unet": "initial_down.0.weight"}


def band_roles_from(value: Any) -> tuple[str, ...] | None:
    """``band_roles`` as stored (checkpoints, dataset.json): a list of colour names, or None (a ValueError else)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"band_roles {value!r} is not a list of colour names")
    return tuple(value)


@dataclass(frozen=True)
class GeneratorMeta:
    """Everything needed to rebuild a generator and feed it correctly."""

    arch: str
    width: int
    norm_mode: str
    bands: tuple[int, ...] | None = None  # 1-based source bands used in training (None: RGB / 1,2,3)
    # The colour interpretation of those bands ("red", "green", "blue"), when the training image tagged them:
    # translate then finds them by colour in a tagged scene, whatever their order there (None: by index).
    band_roles: tuple[str, ...] | None = None
    scaling: InputScaling | None = None  # None: uint8 data scaled as x/127.5-1, else a per-scene stretch
    tile_size: int | None = 256
    resolution: float | None = None  # ground resolution of the training data (CRS units per pixel)
    resolution_m: float | None = None  # the same in metres (geographic CRSs: at the tiles' centre); None: unknown
    crs_kind: str | None = None  # "projected" or "geographic": the kind of CRS ``resolution`` is measured in
    provenance: dict[str, Any] = field(default_factory=dict)
    source_format: str = FORMAT_NAME  # "geo-sat2map-generator", "pix2pix" or "seed"
    palette: Palette | None = None  # the training maps' palette (kind exact/clustered), for translate --palette auto

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bands"] = list(self.bands) if self.bands is not None else None
        out["band_roles"] = list(self.band_roles) if self.band_roles is not None else None
        out["scaling"] = self.scaling.to_dict() if self.scaling is not None else None
        out["palette"] = self.palette.to_dict() if self.palette is not None else None
        out.pop("source_format")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorMeta:
        scaling = data.get("scaling")
        bands = data.get("bands")
        return cls(
            arch=str(data["arch"]),
            width=int(data["width"]),
            norm_mode=str(data["norm_mode"]),
            bands=tuple(int(b) for b in bands) if bands is not None else None,
            band_roles=band_roles_from(data.get("band_roles")),
            scaling=InputScaling.from_dict(scaling) if scaling is not None else None,
            tile_size=int(data["tile_size"]) if data.get("tile_size") is not None else None,
            resolution=float(data["resolution"]) if data.get("resolution") is not None else None,
            resolution_m=float(data["resolution_m"]) if data.get("resolution_m") is not None else None,
            crs_kind=str(data["crs_kind"]) if data.get("crs_kind") is not None else None,
            provenance=dict(data.get("provenance") or {}),
            palette=Palette.from_dict(data["palette"], "palette") if data.get("palette") is not None else None,
        )

    def ground_resolution(self) -> float | None:
        """The training pixel size in metres: stored, or for older files derived from ``resolution`` when their
        CRS (recorded in the provenance) was projected in metres; None when unknown."""
        if self.resolution_m is not None:
            return self.resolution_m
        factor = _projected_metres_per_unit(self.provenance.get("crs"))
        return self.resolution * factor if self.resolution is not None and factor is not None else None


def _projected_metres_per_unit(crs: Any) -> float | None:
    """Metres per unit of a projected CRS given as text (e.g. "EPSG:32618"); None for any other or unreadable."""
    if not isinstance(crs, str) or not crs:
        return None
    try:
        parsed = pyproj.CRS.from_user_input(crs)
        if not parsed.is_projected:
            return None
        factor = parsed.axis_info[0].unit_conversion_factor
    except (pyproj.exceptions.CRSError, IndexError):
        return None
    return float(factor) if factor > 0 else None


@dataclass
class LoadedGenerator:
    net: nn.Module  # the generator in its trained form (train-mode BN/dropout modules)
    meta: GeneratorMeta
    path: Path
    sha256: str

    def for_inference(self, norm_mode: str | None = None, dropout: bool = False) -> InferenceGenerator:
        return InferenceGenerator(self.net, norm_mode or self.meta.norm_mode, dropout)


def save_generator(path: str | os.PathLike[str], net: nn.Module, meta: GeneratorMeta, overwrite: bool = True) -> None:
    """Write our format atomically. ``net`` may be wrapped (DDP, torch.compile): prefixes are stripped."""
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "metadata": meta.to_dict(),
        "state_dict": _strip_prefixes({k: v.detach().cpu() for k, v in net.state_dict().items()}),
    }
    with atomic_output(path, overwrite=overwrite, what="generator") as tmp:
        torch.save(payload, tmp)


def load_generator(path: str | os.PathLike[str], hash_file: bool = True) -> LoadedGenerator:
    """Load any supported generator checkpoint, auto-detecting its family; raise CheckpointError if not.

    ``hash_file=False`` leaves ``sha256`` empty, for callers that hash the file concurrently."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: weights file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; give the weights file (e.g. RUN_DIR/generator.pt)")
    obj = read_torch_file(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
        meta, state = _read_own_format(path, obj)
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        state = _tensor_dict(path, obj["state_dict"], "the 'state_dict' entry")
        arch = _detect_arch(path, state)
        meta = GeneratorMeta(arch, _infer_width(state, arch), DEFAULT_NORM_MODE[arch], source_format="seed")
    elif isinstance(obj, dict):
        state = _tensor_dict(path, obj, "the file")
        arch = _detect_arch(path, state)
        meta = GeneratorMeta(
            arch, _infer_width(state, arch), DEFAULT_NORM_MODE[arch],
            source_format="pix2pix" if arch == "unet256" else "seed",
        )
    else:
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, not a generator state_dict; expected a geo-sat2map "
            "generator.pt, a pix2pix *_net_G.pth state_dict or a seed gen.pth.tar"
        )
    net = _uninitialised_generator(meta.arch, meta.width)
    _load_state(path, net, state, meta.arch)
    return LoadedGenerator(net=net, meta=meta, path=path, sha256=file_sha256(path) if hash_file else "")


def read_torch_file(path: Path, what: str = "PyTorch checkpoint") -> Any:
    """``torch.load(weights_only=True)`` of a user's file; any failure is one CheckpointError line naming it.

    On damaged or foreign bytes torch.load raises nearly anything (UnpicklingError, RuntimeError, IndexError,
    KeyError, UnicodeDecodeError, ...) and may warn first ("Detected pickle protocol 157"): all of it means
    "not a readable checkpoint", so every exception is caught here, at the reader, and warnings are silenced.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc) or "global" in str(exc):  # a class/function reference: pickled objects
            raise CheckpointError(
                f"{path}: contains pickled Python objects (e.g. a whole model saved with torch.save(model)); "
                "refusing to unpickle code. Save and pass the model's state_dict() instead"
            ) from exc
        raise CheckpointError(f"{path}: not a {what} (unreadable pickle: {_unpickling_detail(exc)})") from exc
    except Exception as exc:
        detail = first_line(exc)
        if not isinstance(exc, RuntimeError | OSError | EOFError):  # e.g. KeyError: 122 says little on its own
            detail = f"{type(exc).__name__}: {detail}"
        raise CheckpointError(f"{path}: not a readable {what} (truncated or corrupt?): {detail}") from exc


def _unpickling_detail(exc: Exception) -> str:
    """The informative line of torch's multi-paragraph weights-only error (errors must stay one line)."""
    marker = "WeightsUnpickler error:"
    text = str(exc)
    if marker in text:
        detail = text.split(marker, 1)[1].strip()
        if detail:
            return detail.splitlines()[0].strip()
    return first_line(exc)


def _read_own_format(path: Path, obj: dict[str, Any]) -> tuple[GeneratorMeta, dict[str, torch.Tensor]]:
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: geo-sat2map format version {version!r} is newer than this tool supports "
            f"({FORMAT_VERSION}); upgrade geo-sat2map"
        )
    try:
        meta = replace(GeneratorMeta.from_dict(obj["metadata"]), source_format=FORMAT_NAME)
    except (KeyError, TypeError, ValueError, UserError) as exc:
        raise CheckpointError(f"{path}: metadata block is incomplete or malformed ({exc})") from exc
    if meta.arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: unknown architecture {meta.arch!r} in metadata")
    if meta.norm_mode not in NORM_MODES:
        raise CheckpointError(f"{path}: unknown norm mode {meta.norm_mode!r} in metadata")
    return meta, _tensor_dict(path, obj.get("state_dict"), "the 'state_dict' entry")


def _tensor_dict(path: Path, obj: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: {where} is not a non-empty state_dict")
    non_tensor = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if non_tensor:
        raise CheckpointError(
            f"{path}: {where} is not a state_dict of tensors (non-tensor entries: {_summarise(non_tensor)}); "
            "expected a generator state_dict"
        )
    return _strip_prefixes(obj)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def _detect_arch(path: Path, state: dict[str, torch.Tensor]) -> str:
    for arch, key in _FIRST_WEIGHT.items():
        if key in state:
            return arch
    raise CheckpointError(
        f"{path}: state_dict of an unknown architecture (keys: {_summarise(list(state))}); expected a public "
        "pix2pix UnetGenerator ('model.model.0.weight', ...) or the seed Generator ('initial_down.0.weight', ...)"
    )


def _infer_width(state: dict[str, torch.Tensor], arch: str) -> int:
    return int(state[_FIRST_WEIGHT[arch]].shape[0])


def _uninitialised_generator(arch: str, width: int) -> nn.Module:
    """The generator without storage (meta device), to take the loaded tensors as its own (``_load_state``):
    no random initialisation that every weight would overwrite, no second copy of the weights (0.7 s for ngf 64)."""
    with torch.device("meta"):
        return build_generator(arch, width)


def _load_state(path: Path, net: nn.Module, state: dict[str, torch.Tensor], arch: str) -> None:
    expected = net.state_dict()
    # Old pix2pix files predate BatchNorm's num_batches_tracked: it carries no weights, keep ours.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_summarise(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_summarise(unexpected)})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} with wrong shape ({_summarise(wrong_shape)})")
        raise CheckpointError(
            f"{path}: does not match the {arch} generator of width {_infer_width(state, arch)}: " + "; ".join(parts)
        )
    # assign: the loaded tensors become the parameters (the meta network has no storage to copy into), in the
    # network's dtypes and as contiguous tensors of their own.
    net.load_state_dict({k: v.to(expected[k].dtype).contiguous() for k, v in state.items()}, strict=False, assign=True)
    for name, buffer in list(net.named_buffers()):
        if name not in state:  # num_batches_tracked of old files: BatchNorm's initial value
            owner, _, attribute = name.rpartition(".")
            net.get_submodule(owner).register_buffer(attribute, torch.zeros_like(buffer, device="cpu"))


def _summarise(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
