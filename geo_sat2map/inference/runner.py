"""Running the generator on device batches, and timing device work without stalling the device."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch

from geo_sat2map.errors import first_line
from geo_sat2map.models import InferenceGenerator, pack_convolutions_for_cpu, with_low_precision_convolutions

log = logging.getLogger("geo_sat2map")


def device_binder(device: torch.device) -> Callable[[], None]:
    """A function that makes ``device`` the current CUDA device of the thread that calls it (on a CPU: one torch
    thread for the calling worker; a no-op elsewhere).

    Every new thread starts on GPU 0: a worker thread of a run on another GPU (``--device cuda:1``, a torchrun
    rank) that allocates pinned memory, records an event or creates a stream there would open a context on
    GPU 0 (about 0.5 GiB each) or time the wrong GPU. Make the binder on the thread that owns the run (a
    ``cuda`` device without an index means that thread's current device); call it first in every worker.
    """
    if device.type == "cpu":
        # A worker's torch ops run on its own thread only: a second OpenMP team of as many threads as cores would
        # compete with (and spin against) the generator's for the same cores (OpenMP's thread count is per thread).
        return lambda: torch.set_num_threads(1)
    if device.type != "cuda":
        return lambda: None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return lambda: torch.cuda.set_device(index)


def device_context(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``device`` as the calling thread's current CUDA device inside the block (restored after; a no-op
    elsewhere): for the run's own thread, which belongs to the caller."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class StageClock:
    """Per-stage time of work queued on ``device``.

    On CUDA each section records a pair of events on a stream of ``device`` (never the calling thread's current
    device: that may be another GPU) and the totals are read once at the end (reading them earlier would stall
    the stream); elsewhere the work is synchronous and the wall time of each section is its cost.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = defaultdict(list)
        self._seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()  # sections are timed from several threads

    @contextlib.contextmanager
    def __call__(self, stage: str, stream: torch.cuda.Stream | None = None) -> Iterator[None]:
        """Time the work queued inside the block (on ``stream``, default the device's current one)."""
        if self.cuda:
            if stream is None:
                stream = torch.cuda.current_stream(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            yield
            end.record(stream)
            with self._lock:
                self._events[stage].append((start, end))
        else:
            started = time.perf_counter()
            yield
            with self._lock:
                self._seconds[stage] += time.perf_counter() - started

    def totals(self) -> dict[str, float]:
        """Seconds per stage (synchronises the device once)."""
        totals = dict(self._seconds)
        if self._events:
            torch.cuda.synchronize(self.device)
            for stage, pairs in self._events.items():
                totals[stage] = totals.get(stage, 0.0) + sum(s.elapsed_time(e) for s, e in pairs) / 1000
        return totals


GRAPH_WARMUP_CALLS = 2  # uncaptured calls before the capture: cuDNN picks (and times) its kernels, caches fill
CHANNELS_LAST_DEVICES = ("cuda", "cpu")  # measured faster there (benchmarks/norm_layout_bench.py on CPU)


class GeneratorRunner:
    """The generator on ``device`` at ``dtype``, channels_last on CUDA and CPU, optionally compiled.

    Called with a (n, 3, tile, tile) float32 device batch; returns float32 outputs on the device. With
    ``compile``, ``torch.compile`` traces the model once for the engine's fixed batch shape; if compiling fails
    the runner says so and stays eager. ``deterministic``: on CUDA, convolution algorithms are chosen
    deterministically instead of by timing (cuDNN's benchmark may pick different kernels in each process, and
    some sum in another order), for runs whose processes must agree to the bit (split runs).

    ``graph`` (default: on CUDA): the forward pass (eager or compiled) is captured as one CUDA graph on the first
    batch and replayed for every batch of that shape. A U-Net forward is a few hundred kernels; launched one by
    one from Python at a few microseconds each, the host, not the GPU, set the pace at translate's batch sizes.
    A batch of another shape runs uncaptured. If capturing fails the runner says so and stays uncaptured.
    """

    def __init__(
        self, model: InferenceGenerator, device: torch.device, dtype: torch.dtype, clock: StageClock,
        compile: bool = False, deterministic: bool = False, graph: bool | None = None,
    ) -> None:
        if dtype != torch.float32:  # a copy with bf16/fp16 convolution weights: the fp32 model stays as it is
            model = with_low_precision_convolutions(model, dtype)
        model = model.to(device)
        self.memory_format = (torch.channels_last if device.type in CHANNELS_LAST_DEVICES
                              else torch.contiguous_format)
        model = model.to(memory_format=self.memory_format)
        # Compiled graphs take the plain weights (inductor's freezing, which would pack them, is off by default).
        if device.type == "cpu" and dtype != torch.float32 and not compile:
            pack_convolutions_for_cpu(model)  # the copy above is ours to change; after it, not copyable or movable
        self.model, self.device, self.dtype, self.clock = model, device, dtype, clock
        self.deterministic = deterministic
        started = time.perf_counter()
        self._forward = torch.compile(model, dynamic=False) if compile else model  # imports its compiler stack
        self.compiled = compile
        self.compile_seconds = time.perf_counter() - started
        self._first_call = True
        self.graphed = device.type == "cuda" if graph is None else graph
        self.capture_seconds = 0.0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_in: torch.Tensor | None = None
        self._static_out: torch.Tensor | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Process-wide settings while running. CPU: flush denormals to zero (tiny activations, common in deep
        U-Nets with untrained or weakly trained layers, otherwise take a slow path and can halve throughput).
        CUDA at fp32: no TF32 (cuDNN uses it for convolutions by default), so fp32 means fp32; ask for bf16
        for speed. CUDA convolutions: the fastest algorithm timed once for the fixed shapes (cuDNN benchmark),
        or a deterministic choice when ``deterministic``."""
        if self.device.type == "cuda":
            cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
            saved = cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark, cudnn.deterministic
            if self.dtype == torch.float32:
                cudnn.allow_tf32 = matmul.allow_tf32 = False
            cudnn.benchmark, cudnn.deterministic = not self.deterministic, self.deterministic
            try:
                yield
            finally:
                cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark, cudnn.deterministic = saved
            return
        if self.device.type != "cpu":
            yield
            return
        torch.set_flush_denormal(True)
        try:
            yield
        finally:
            torch.set_flush_denormal(False)  # PyTorch's default; there is no getter to restore from

    def warm_up(self, batch_size: int, tile: int) -> None:
        """Compile and/or capture now, on a batch of zeros of the run's shape (inside ``active``), so that the
        stream's first batch does not wait for it. Nothing to do for an eager, uncaptured runner."""
        if (self._first_call and self.compiled) or (self.graphed and self._graph is None):
            self(torch.zeros((batch_size, 3, tile, tile), device=self.device))

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if self._graph is not None and inputs.shape == self._static_in.shape:  # type: ignore[union-attr]
            return self._replay(inputs)
        inputs = inputs.contiguous(memory_format=self.memory_format)
        if self._first_call and self.compiled:
            return self._first_compiled_call(inputs)
        if self.graphed and self._graph is None:
            return self._first_graphed_call(inputs)
        with self.clock("generator"):
            return self._run(inputs)

    def _run(self, inputs: torch.Tensor) -> torch.Tensor:
        # bf16/fp16: the convolution weights were cast once (not by autocast at every call, which cost the CPU
        # about 10 %); activations flow in that dtype and every norm takes float32 statistics (per_tile_norm).
        with torch.inference_mode():
            return self._forward(inputs.to(self.dtype)).float()

    def _replay(self, inputs: torch.Tensor) -> torch.Tensor:
        """One batch through the captured graph. The result is copied out of the graph's output buffer, which the
        next replay overwrites while the merger (another thread, same stream) may not yet have queued its reads."""
        assert self._graph is not None and self._static_in is not None and self._static_out is not None
        with self.clock("generator"):
            self._static_in.copy_(inputs)
            self._graph.replay()
            return self._static_out.clone()

    def _first_graphed_call(self, inputs: torch.Tensor) -> torch.Tensor:
        """Warm up, capture the forward pass for this batch shape, and replay it for this batch; on any failure,
        stay uncaptured (with one log line)."""
        self.graphed = False  # one try
        started = time.perf_counter()
        device = self.device
        static_in = torch.empty_like(inputs, memory_format=self.memory_format).copy_(inputs)
        # Warm-up and capture on one side stream: cuDNN's algorithm choice (benchmark mode times candidates),
        # its workspaces and per-stream handles must exist before the capture, which may not create them.
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        try:
            with torch.cuda.stream(stream):
                for _ in range(GRAPH_WARMUP_CALLS):
                    self._run(static_in)
            graph = torch.cuda.CUDAGraph()
            # thread_local: the reader and writer threads allocate pinned buffers while this thread captures.
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                static_out = self._run(static_in)
            torch.cuda.current_stream(device).wait_stream(stream)
            torch.cuda.synchronize(device)
        except Exception as exc:  # a capture fails on some ops or drivers: run uncaptured, as before
            torch.cuda.current_stream(device).wait_stream(stream)
            log.warning("CUDA graph capture of the generator failed (%s: %s); running it uncaptured",
                        type(exc).__name__, first_line(exc))
            with self.clock("generator"):
                return self._run(inputs)
        self._graph, self._static_in, self._static_out = graph, static_in, static_out
        self.capture_seconds = time.perf_counter() - started
        log.info("captured the generator as a CUDA graph for batches of %d in %.2f s", inputs.shape[0],
                 self.capture_seconds)
        return self._replay(inputs)

    def _first_compiled_call(self, inputs: torch.Tensor) -> torch.Tensor:
        """Compile on the first batch (timed on its own); fall back to eager if the compiler fails."""
        self._first_call = False
        started = time.perf_counter()
        try:
            outputs = self._run(inputs)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as exc:  # compilers fail in many ways (no C++ toolchain, unsupported op): stay eager
            log.warning("--compile: torch.compile failed (%s: %s); running eager", type(exc).__name__, first_line(exc))
            self._forward, self.compiled = self.model, False
            with self.clock("generator"):
                return self._run(inputs)
        self.compile_seconds += time.perf_counter() - started
        log.info("--compile: compiled the generator for batches of %d in %.1f s (one-time; it pays off once the "
                 "time saved per window times the windows exceeds that)", inputs.shape[0], self.compile_seconds)
        if self.graphed:  # the compiled kernels are captured too: no Python (guards, launches) per batch
            self._first_graphed_call(inputs)
        return outputs
