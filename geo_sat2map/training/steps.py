"""How one training step runs: eagerly, or captured once as a CUDA graph and replayed.

At batch 1 a pix2pix step is a chain of several hundred small kernels, and launching them from Python costs
more than running them. ``GraphedStep`` records the whole step once (batch preparation, G forward, D step,
G step, both Adam updates and the loss accumulation) and then launches it as one graph: per step the host
copies the batch's raw inputs into static buffers and calls ``replay()``, without waiting for the GPU.

Both runners take a *raw* batch from a feed (``device_data.WorkerFeed`` or ``DeviceFeed``) and the feed's
``prepare`` (device-only tensor ops), add the step's losses to ``loss_sum`` on the device, and return them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch

from geo_sat2map.training.config import TrainConfig
from geo_sat2map.training.distributed import DistContext
from geo_sat2map.training.loop import Pix2Pix

log = logging.getLogger(__name__)

Prepare = Callable[[Sequence[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]
# Uncaptured steps before the capture: cuDNN picks its kernels, Adam creates its state, caches fill up.
WARMUP_STEPS = 3


def plan_graph(config: TrainConfig, device: torch.device, dtype: torch.dtype, ctx: DistContext) -> tuple[bool, str]:
    """Whether the step can be one CUDA graph here, and the reason in words for the log."""
    if not config.cuda_graph:
        return False, "cuda_graph = false"
    if device.type != "cuda":
        return False, f"{device.type}: CUDA graphs need a CUDA GPU"
    if ctx.enabled:
        return False, (f"{ctx.world_size} processes: DistributedDataParallel's gradient all-reduce is not captured "
                       "(each process runs its step eagerly)")
    if dtype == torch.float16:
        return False, "fp16: the gradient scaler reads an inf check on the host every step (bf16 needs no scaler)"
    if config.compile:
        return False, "compile = true: torch.compile's kernels run instead (set compile = false to capture the step)"
    return True, "G, D and both Adam updates launched as one graph per step"


def step_runner(model: Pix2Pix, prepare: Prepare, loss_sum: torch.Tensor, batch_size: int) -> EagerStep | GraphedStep:
    """The runner ``model`` was built for: ``GraphedStep`` when it is ``graphed``, else ``EagerStep``."""
    if model.graphed:
        return GraphedStep(model, prepare, loss_sum, batch_size)
    return EagerStep(model, prepare, loss_sum)


class EagerStep:
    """The step as plain PyTorch calls."""

    def __init__(self, model: Pix2Pix, prepare: Prepare, loss_sum: torch.Tensor) -> None:
        self.model, self.prepare, self.loss_sum = model, prepare, loss_sum
        self.capture_seconds: float | None = None

    def __call__(self, raw: Sequence[torch.Tensor]) -> torch.Tensor:
        A, B = self.prepare([t.to(self.model.device, non_blocking=True) for t in raw])
        losses = self.model.step(A, B)
        self.loss_sum += losses
        return losses


class GraphedStep:
    """The step captured as one CUDA graph on its first full batch, then replayed (CUDA only).

    A smaller batch (an epoch's last one, when the tiles do not divide into batches) runs eagerly on the same
    networks and optimisers. The capture's warm-up steps train nothing: the state they change (weights,
    BatchNorm statistics, Adam moments and step counts, the CUDA random stream) is put back before capture, so
    every step of a run, resumed or not, is a replay of the same graph.
    """

    def __init__(self, model: Pix2Pix, prepare: Prepare, loss_sum: torch.Tensor, batch_size: int) -> None:
        assert model.graphed, "build Pix2Pix with graphed=True (capturable Adam, LR in a tensor)"
        self.model, self.prepare, self.loss_sum, self.batch_size = model, prepare, loss_sum, batch_size
        self.eager = EagerStep(model, prepare, loss_sum)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[torch.Tensor] = []
        self.losses: torch.Tensor | None = None  # the graph's output: the last replayed step's losses
        self.capture_seconds: float | None = None

    def __call__(self, raw: Sequence[torch.Tensor]) -> torch.Tensor:
        if raw[0].shape[0] != self.batch_size:
            return self.eager(raw)
        if self.graph is None:
            self._capture(raw)
        for static, value in zip(self.inputs, raw):
            static.copy_(value, non_blocking=True)
        assert self.graph is not None and self.losses is not None
        self.graph.replay()
        return self.losses

    def _capture(self, raw: Sequence[torch.Tensor]) -> None:
        model, device = self.model, self.model.device
        started = time.perf_counter()
        self.inputs = [torch.empty(t.shape, dtype=t.dtype, device=device) for t in raw]
        for static, value in zip(self.inputs, raw):
            static.copy_(value)
        saved = _TrainingState(model)
        # Warm up and capture on one side stream: per-stream library handles and workspaces then exist before
        # the capture, which must not create them.
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):
                model.step(*self.prepare(self.inputs))
        torch.cuda.current_stream(device).wait_stream(stream)
        saved.restore()
        del saved
        for optimizer in (model.opt_G, model.opt_D):
            optimizer.zero_grad(set_to_none=True)  # gradients are then allocated in the graph's memory pool
        graph = torch.cuda.CUDAGraph()
        # thread_local: DataLoader's pin-memory thread may allocate pinned buffers while this thread captures.
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            losses = model.step(*self.prepare(self.inputs))
            self.loss_sum.add_(losses)
        self.graph, self.losses = graph, losses
        torch.cuda.synchronize(device)
        self.capture_seconds = time.perf_counter() - started
        log.debug("captured the training step as a CUDA graph in %.2f s (%d warm-up steps, undone)",
                 self.capture_seconds, WARMUP_STEPS)


class _TrainingState:
    """A copy of everything a training step changes, to undo the capture's warm-up steps in place (the graph
    keeps the addresses of these tensors, so they are overwritten, never replaced)."""

    def __init__(self, model: Pix2Pix) -> None:
        self.model = model
        self.nets = [t.detach().clone() for t in _net_tensors(model)]
        self.moments = {
            (n, param): {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
            for n, optimizer in enumerate(_optimizers(model))
            for param, state in optimizer.state.items()
        }
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(model.device) if model.device.type == "cuda" else None

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, saved in zip(_net_tensors(self.model), self.nets):
            tensor.copy_(saved)
        for n, optimizer in enumerate(_optimizers(self.model)):
            for param, state in optimizer.state.items():
                saved_state = self.moments.get((n, param))
                for key, value in state.items():
                    if not isinstance(value, torch.Tensor):
                        continue
                    if saved_state is None:
                        value.zero_()  # Adam's state as it creates it: zero moments, step 0
                    else:
                        value.copy_(saved_state[key])
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.model.device)


def _net_tensors(model: Pix2Pix) -> list[torch.Tensor]:
    """Parameters and buffers (BatchNorm statistics and batch counts) of G and D, in a fixed order."""
    return [t for net in (model.G, model.D) for t in net.state_dict(keep_vars=True).values()]


def _optimizers(model: Pix2Pix) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    return model.opt_G, model.opt_D
