"""The pix2pix recipe: networks, losses, optimisers and one training step; validation on 8-bit outputs.

One step (pix2pix ``optimize_parameters``): fake = G(A); D step on
``0.5 * (gan(D(A, fake.detach()), 0) + gan(D(A, B), 1))``; then, with D frozen,
G step on ``gan(D(A, fake), 1) + lambda_l1 * mean|fake - B|``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from geo_sat2map.errors import UserError
from geo_sat2map.metrics import MetricAccumulator, to_uint8
from geo_sat2map.models import InferenceGenerator, PatchGAN, build_generator, prepare_for_inference
from geo_sat2map.training import distributed
from geo_sat2map.training.config import TrainConfig
from geo_sat2map.training.distributed import DistContext

LOSS_NAMES = ("loss_D", "loss_G_GAN", "loss_G_L1")  # loss_G_L1 is lambda-weighted, as pix2pix prints it
VAL_KEYS = ("l1", "rmse", "psnr", "ssim", "acc_5", "acc_10", "acc_20")


def init_weights(net: nn.Module, gain: float) -> None:
    """pix2pix 'normal' init: conv weights N(0, gain), BatchNorm weights N(1, gain), biases 0."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, gain)
            nn.init.zeros_(module.bias)


class GanLoss:
    """'vanilla': BCE on logits (the paper); 'lsgan': least squares on the raw D output."""

    def __init__(self, mode: str) -> None:
        self.criterion = nn.BCEWithLogitsLoss() if mode == "vanilla" else nn.MSELoss()

    def __call__(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        logits = logits.float()
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        return self.criterion(logits, target)


def _autocast(device: torch.device, dtype: torch.dtype, cache: bool = True) -> contextlib.AbstractContextManager[Any]:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


class Pix2Pix:
    """Generator, discriminator, their optimisers and the AMP scaler, placed on one device.

    ``graphed``: the step will be captured in a CUDA graph (``steps.GraphedStep``). Its Adam optimisers are
    then ``capturable`` with the learning rate in a device tensor (a graph replays the values it was captured
    with, so the per-epoch LR must be read from memory), and autocast does not cache weight casts across
    the capture boundary.
    """

    def __init__(
        self, config: TrainConfig, device: torch.device, dtype: torch.dtype, ctx: DistContext, graphed: bool = False
    ) -> None:
        self.config = config
        self.device = device
        self.dtype = dtype
        self.graphed = graphed
        cuda = device.type == "cuda"
        if cuda:
            # Fixed tile size: let cuDNN time its kernels once and keep the fastest, unless bit-exact resumes
            # are asked for (timing may pick other kernels in another process; some sum in varying order).
            torch.backends.cudnn.benchmark = not config.deterministic
            torch.backends.cudnn.deterministic = config.deterministic
        self.memory_format = torch.channels_last if cuda and config.channels_last else torch.contiguous_format
        torch.manual_seed(config.seed)  # identical initial weights in every process
        self.G = build_generator(config.arch, config.ngf)
        self.D = PatchGAN(in_channels=6, ndf=config.ndf)
        for net in (self.G, self.D):
            init_weights(net, config.init_gain)
            net.to(device, memory_format=self.memory_format).train()
        self._fused = True if cuda else None  # fused Adam on GPUs; PyTorch's default (foreach) elsewhere
        self.lr = config.lr
        self.opt_G, self.opt_D = (self._adam(net) for net in (self.G, self.D))
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.gan = GanLoss(config.gan_mode)
        G_fwd = distributed.wrap(self.G, ctx, device)
        D_fwd = distributed.wrap(self.D, ctx, device)
        D_frozen = self.D  # the G step never updates D, so it skips DDP's gradient synchronisation
        if config.compile:
            G_fwd, D_fwd, D_frozen = (torch.compile(m) for m in (G_fwd, D_fwd, D_frozen))
        self.G_fwd, self.D_fwd, self.D_frozen = G_fwd, D_fwd, D_frozen

    def _adam(self, net: nn.Module) -> torch.optim.Adam:
        betas = (self.config.beta1, self.config.beta2)
        if not self.graphed:
            return torch.optim.Adam(net.parameters(), lr=self.config.lr, betas=betas, fused=self._fused)
        lr = torch.tensor(self.config.lr, dtype=torch.float32, device=self.device)
        adam = torch.optim.Adam(net.parameters(), lr=lr, betas=betas, fused=True, capturable=True)
        # Warm-up and the epoch's last, smaller batch run uncaptured on purpose: skip torch's advice about it.
        adam._warned_capturable_if_run_uncaptured = True  # type: ignore[attr-defined]
        return adam

    def set_epoch_lr(self, epoch: int) -> float:
        """The linear schedule is a pure function of the epoch, so resuming restores it exactly."""
        self.lr = self.config.lr * self.config.lr_factor(epoch)
        for optimizer in (self.opt_G, self.opt_D):
            for group in optimizer.param_groups:
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(self.lr)  # in place: a captured graph reads this tensor
                else:
                    group["lr"] = self.lr
        return self.lr

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def step(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        """One D and one G update; returns the detached losses (LOSS_NAMES order) without a host sync."""
        autocast = _autocast(self.device, self.dtype, cache=not self.graphed)
        with autocast:
            fake = self.G_fwd(A)

        self.D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        with autocast:
            loss_D = 0.5 * (self.gan(self.D_fwd(A, fake.detach()), False) + self.gan(self.D_fwd(A, B), True))
        self.scaler.scale(loss_D).backward()
        self.scaler.step(self.opt_D)

        self.D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        with autocast:
            loss_G_GAN = self.gan(self.D_frozen(A, fake), True)
        loss_G_L1 = (fake.float() - B.float()).abs().mean() * self.config.lambda_l1
        self.scaler.scale(loss_G_GAN + loss_G_L1).backward()
        self.scaler.step(self.opt_G)
        self.scaler.update()
        return torch.stack([loss_D.detach(), loss_G_GAN.detach(), loss_G_L1.detach()]).float()

    def state_dict(self) -> dict[str, Any]:
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        for optimizer, key in ((self.opt_G, "opt_G"), (self.opt_D, "opt_D")):
            self._load_optimizer(optimizer, state[key])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def _load_optimizer(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Restore moments and step counts; hyperparameters and kernels follow the current config/device (and
        the LR tensor a captured graph reads stays the same object).

        ``Optimizer.load_state_dict`` keeps the saved moments' strides: NCHW from a CPU run, NHWC from a
        channels_last one. Each moment is laid out like its parameter again, since the fused CUDA Adam requires
        the same layout for both (a resume across a device or ``channels_last`` change would fail at step 1)."""
        settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        optimizer.load_state_dict(state)
        for group, own in zip(optimizer.param_groups, settings):
            group.update(own)
            on_device = group["fused"] or group["capturable"]  # these keep the step count on the GPU
            for param in group["params"]:
                param_state = optimizer.state.get(param, {})
                for name, value in param_state.items():
                    if name == "step":
                        param_state[name] = value.to(param.device if on_device else "cpu")
                    elif isinstance(value, torch.Tensor) and value.shape == param.shape \
                            and value.stride() != param.stride():
                        param_state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)

    def inference_generator(self, norm_mode: str) -> InferenceGenerator:
        """A copy of G as translate will run it (its swapped-in norm layers are built on the CPU: move it)."""
        return prepare_for_inference(self.G, norm_mode).to(self.device, memory_format=self.memory_format)

    @torch.no_grad()
    def predict(self, net: InferenceGenerator, A: torch.Tensor) -> np.ndarray:
        """uint8 (N, 3, H, W) predictions, rounded the way translate writes them."""
        with _autocast(self.device, self.dtype):
            return to_uint8(net(self.to_device(A)))


def validate(
    model: Pix2Pix, net: InferenceGenerator, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
) -> dict[str, float]:
    """Val metrics on 8-bit outputs over the valid pixels of each tile (its mask): L1/RMSE/acc pooled over
    pixels, PSNR/SSIM as per-tile means."""
    metrics = MetricAccumulator()
    for A, B, valid in batches:
        for pred, ref, tile_valid in zip(model.predict(net, A), B.numpy(), valid.numpy()):
            metrics.update(pred, ref, tile_valid)
    if metrics.pixels == 0:
        raise UserError("no val tile has a valid pixel in its centre crop (their masks/ files); check val/")
    result = metrics.result(per_image=True)
    return {f"val_{key}": float(result[key]) for key in VAL_KEYS}
