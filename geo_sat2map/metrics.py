"""Image-to-image metrics on 8-bit products (what translate writes), shared by train and evaluate.

All differences are in 8-bit levels (0-255). ``acc(d)`` is the share of pixels whose largest channel
difference is below ``d``. SSIM is the Gaussian-window SSIM (11x11, sigma 1.5, K1=0.01, K2=0.03) averaged
over channels. PSNR is capped at ``PSNR_CAP`` dB so identical images give a finite, JSON-safe number.

``MetricAccumulator`` pools pixels (L1, RMSE, acc, and the pooled PSNR/SSIM) across updates and also keeps
per-update (per-image) PSNR and SSIM, so a dataset can report the per-image means that papers use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

PSNR_CAP = 100.0
DEFAULT_DELTAS = (5, 10, 20)
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def psnr_from_mse(mse: float) -> float:
    return PSNR_CAP if mse <= 0 else min(PSNR_CAP, 10.0 * math.log10(255.0**2 / mse))


def _gaussian_kernel(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (H, W), averaged over channels, of two uint8 (C, H, W) images (reflect-padded)."""
    x = torch.from_numpy(pred.astype(np.float64))[None]
    y = torch.from_numpy(ref.astype(np.float64))[None]
    channels = x.shape[1]
    g = _gaussian_kernel()
    pad = g.numel() // 2
    kh = g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    kw = g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        mode = "reflect" if min(t.shape[-2:]) > pad else "replicate"
        t = F.pad(t, (pad, pad, pad, pad), mode=mode)
        return F.conv2d(F.conv2d(t, kh, groups=channels), kw, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + _C1) * (2 * cov + _C2)) / ((mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2))
    return s[0].mean(dim=0).numpy()


@dataclass
class MetricAccumulator:
    deltas: tuple[int, ...] = DEFAULT_DELTAS
    pixels: int = 0
    abs_sum: float = 0.0
    sq_sum: float = 0.0
    ssim_sum: float = 0.0
    below: dict[int, int] = field(default_factory=dict)
    image_psnr: list[float] = field(default_factory=list)
    image_ssim: list[float] = field(default_factory=list)

    def update(self, pred: np.ndarray, ref: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add one image (or scene window): uint8 (C, H, W) each; ``valid`` (H, W) True where compared."""
        if pred.shape != ref.shape:
            raise ValueError(f"shape mismatch {pred.shape} vs {ref.shape}")
        if valid is None:
            valid = np.ones(pred.shape[1:], dtype=bool)
        n = int(valid.sum())
        if n == 0:
            return
        diff = np.abs(pred.astype(np.int16) - ref.astype(np.int16))[:, valid]  # (C, n)
        channels = diff.shape[0]
        abs_sum = float(diff.sum())
        sq_sum = float((diff.astype(np.int64) ** 2).sum())
        ssim_valid = ssim_map(pred, ref)[valid]
        worst = diff.max(axis=0)
        self.pixels += n
        self.abs_sum += abs_sum
        self.sq_sum += sq_sum
        self.ssim_sum += float(ssim_valid.sum())
        for d in self.deltas:
            self.below[d] = self.below.get(d, 0) + int((worst < d).sum())
        self.image_psnr.append(psnr_from_mse(sq_sum / (n * channels)))
        self.image_ssim.append(float(ssim_valid.mean()))
        self._channels = channels

    def result(self, per_image: bool = False) -> dict[str, float]:
        """L1, RMSE, acc(d) pooled over pixels; PSNR/SSIM pooled, or per-image means if ``per_image``."""
        if self.pixels == 0:
            raise ValueError("no valid pixels were compared")
        values = self.pixels * self._channels
        mse = self.sq_sum / values
        out = {"l1": self.abs_sum / values, "rmse": math.sqrt(mse)}
        if per_image:
            out["psnr"] = float(np.mean(self.image_psnr))
            out["ssim"] = float(np.mean(self.image_ssim))
        else:
            out["psnr"] = psnr_from_mse(mse)
            out["ssim"] = self.ssim_sum / self.pixels
        for d in self.deltas:
            out[f"acc_{d}"] = self.below.get(d, 0) / self.pixels
        out["pixels"] = float(self.pixels)
        return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Generator output in [-1, 1] (N, C, H, W) -> uint8 numpy, rounded the way translate writes it."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


# --- map classes: nearest palette colour, confusion matrix, per-class accuracy and IoU -------------------------

_CLASS_CHUNK = 1 << 18  # pixels per step of the nearest-colour search (bounds its K x N temporary)


def nearest_colour(pixels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Index of the nearest colour (Euclidean, RGB) in ``colours`` (K, 3) for uint8 (3, ...) pixels -> (...)."""
    flat = pixels.reshape(pixels.shape[0], -1).astype(np.int32)
    palette = np.asarray(colours, dtype=np.int32)
    bias = (palette**2).sum(axis=1)[:, None]  # |c|^2; |p|^2 is the same for every colour, so it drops out
    out = np.empty(flat.shape[1], dtype=np.intp)
    for start in range(0, flat.shape[1], _CLASS_CHUNK):
        chunk = flat[:, start : start + _CLASS_CHUNK]
        out[start : start + chunk.shape[1]] = (bias - 2 * (palette @ chunk)).argmin(axis=0)
    return out.reshape(pixels.shape[1:])


@dataclass
class ClassAccumulator:
    """Confusion matrix of map classes: every pixel of prediction and reference goes to its nearest palette colour.

    ``result()`` gives, per class, the share of reference pixels, the accuracy (correct / reference pixels of
    that class, i.e. recall) and IoU = TP / (TP + FP + FN); the overall map-class accuracy (correct / all
    pixels) and mIoU, the mean IoU over the classes present in the reference or the prediction.
    """

    names: tuple[str, ...]
    colours: np.ndarray  # (K, 3) uint8
    matrix: np.ndarray = field(default=None)  # type: ignore[assignment]  # (K, K) int64: [reference, predicted]

    def __post_init__(self) -> None:
        self.colours = np.asarray(self.colours, dtype=np.uint8).reshape(-1, 3)
        if len(self.names) != len(self.colours):
            raise ValueError("one colour per class name is needed")
        if self.matrix is None:
            self.matrix = np.zeros((len(self.names), len(self.names)), dtype=np.int64)

    def update(self, pred: np.ndarray, ref: np.ndarray, valid: np.ndarray | None = None) -> None:
        if pred.shape != ref.shape:
            raise ValueError(f"shape mismatch {pred.shape} vs {ref.shape}")
        if valid is not None:
            pred, ref = pred[:, valid], ref[:, valid]
        k = len(self.names)
        codes = nearest_colour(ref, self.colours).ravel() * k + nearest_colour(pred, self.colours).ravel()
        self.matrix += np.bincount(codes, minlength=k * k).reshape(k, k)

    def result(self) -> dict[str, object]:
        total = int(self.matrix.sum())
        if total == 0:
            raise ValueError("no valid pixels were compared")
        tp = np.diag(self.matrix).astype(np.float64)
        ref_pixels = self.matrix.sum(axis=1)
        pred_pixels = self.matrix.sum(axis=0)
        union = ref_pixels + pred_pixels - tp
        classes = {}
        for i, name in enumerate(self.names):
            classes[name] = {
                "reference_share": float(ref_pixels[i] / total),
                "predicted_share": float(pred_pixels[i] / total),
                "accuracy": float(tp[i] / ref_pixels[i]) if ref_pixels[i] else None,
                "iou": float(tp[i] / union[i]) if union[i] else None,
            }
        present = union > 0
        return {
            "overall_accuracy": float(tp.sum() / total),
            "miou": float((tp[present] / union[present]).mean()),
            "classes": classes,
            "confusion": self.matrix.tolist(),
        }
