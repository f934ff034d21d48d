"""The translate pipeline's threads work on the run's GPU: the worker threads bind themselves to its device and
the stage timers record on its streams (every thread starts on GPU 0, whatever device the run uses).

No GPU is needed: the CUDA calls that choose a device are replaced by recorders, so these tests see which
device each thread asks for, and when.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from geo_sat2map.inference import stages
from geo_sat2map.inference.runner import StageClock
from geo_sat2map.inference.stages import ChunkReader, QueueWorker
from geo_sat2map.windows import RowBand, WindowGrid

SECOND_GPU = torch.device("cuda", 1)


def test_a_queue_worker_binds_its_thread_to_the_runs_gpu_before_its_first_item(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(("bind", index, _thread())))
    worker = QueueWorker(lambda item: calls.append(("handle", item, _thread())), "translate-test", 2, SECOND_GPU)
    worker.put("rows")
    worker.close()
    assert calls == [("bind", 1, "translate-test"), ("handle", "rows", "translate-test")]


def test_a_cpu_run_never_selects_a_cuda_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: pytest.fail(f"set_device({index}) on a CPU run"))
    worker = QueueWorker(lambda item: None, "translate-test", 2, torch.device("cpu"))
    worker.put("rows")
    worker.close()


class SceneRows:
    """A scene's rows as ChunkReader reads a raster (``bands``, ``read(row_off, height, out)``), noting whether
    each reading thread had bound itself first."""

    def __init__(self, data: np.ndarray, bound: set[str]) -> None:
        self.data, self.bands, self.bound = data, (1, 2, 3), bound
        self.unbound_reads: list[str] = []

    def read(self, row_off: int, height: int, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if _thread() not in self.bound:
            self.unbound_reads.append(_thread())
        out[...] = self.data[:, row_off:row_off + height]
        return out, np.ones(out.shape[1:], bool)


def test_every_reader_thread_binds_itself_before_reading(monkeypatch):
    bound: set[str] = set()
    monkeypatch.setattr(stages, "device_binder", lambda device: lambda: bound.add(_thread()))
    data = np.random.default_rng(1).integers(0, 255, (3, 600, 300), dtype=np.uint8)
    rows = SceneRows(data, bound)
    grid = WindowGrid.build(600, 300, 256, 64)
    reader = ChunkReader(rows, RowBand.whole(grid), np.dtype(np.uint8), device=torch.device("cpu"), workers=3)
    chunks = list(reader.chunks())
    assert [chunk.row for chunk in chunks] == list(range(grid.shape[0]))
    assert np.array_equal(np.concatenate([chunk.raw.numpy() for chunk in chunks], axis=1), data)
    assert bound and all(name.startswith("translate-read") for name in bound) and not rows.unbound_reads


def test_the_stage_clock_records_on_the_runs_gpu_not_the_threads_current_one(monkeypatch):
    recorded = []

    class Event:
        def __init__(self, enable_timing: bool = False) -> None:
            pass

        def record(self, stream=None) -> None:
            recorded.append(stream)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: ("current stream of", device))
    clock = StageClock(SECOND_GPU)
    with clock("merge"):
        pass
    own = object()
    with clock("download", own):
        pass
    assert recorded == [("current stream of", SECOND_GPU)] * 2 + [own] * 2


def _thread() -> str:
    return threading.current_thread().name
