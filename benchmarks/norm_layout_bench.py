"""The generator's per-tile norm and memory layout on this machine: which layout should inference use here?

    python benchmarks/norm_layout_bench.py --device cpu --ngf 32 --batch 2 --seconds 5

Times the ``instance`` inference generator (random-weights unet256) in four variants: NCHW or channels_last
activations and weights, with ``F.instance_norm`` (which makes its input contiguous, undoing channels_last at
every norm layer) or with ``models.inference.per_tile_norm`` (which keeps the layout). Prints windows/s and
the speed against NCHW with ``F.instance_norm``, the layout used before the per-tile norm kept the format.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from geo_sat2map.device import resolve_device
from geo_sat2map.models import build_generator, prepare_for_inference
from geo_sat2map.models import inference as inference_models


@contextlib.contextmanager
def norm(kind: str) -> Iterator[None]:
    """Run the per-tile norm layers as ``kind`` ("instance_norm" or "per_tile_norm") inside the block."""
    saved = inference_models._PerTileBatchNorm.forward
    if kind == "instance_norm":
        inference_models._PerTileBatchNorm.forward = (  # type: ignore[method-assign]
            lambda self, x: F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps))
    try:
        yield
    finally:
        inference_models._PerTileBatchNorm.forward = saved  # type: ignore[method-assign]


def windows_per_second(net: torch.nn.Module, x: torch.Tensor, seconds: float) -> float:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with torch.inference_mode():
        net(x)  # warm-up
        sync()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or count < 2:
            net(x)
            count += 1
        sync()
        return len(x) * count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ngf", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per variant")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = prepare_for_inference(build_generator("unet256", args.ngf), "instance").to(device)
    inputs = torch.rand(args.batch, 3, args.tile, args.tile, device=device) * 2 - 1
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as translate runs it (GeneratorRunner.active)
    rows = []
    for layout in (torch.contiguous_format, torch.channels_last):
        net = model.to(memory_format=layout)
        x = inputs.contiguous(memory_format=layout)
        for kind in ("instance_norm", "per_tile_norm"):
            with norm(kind):
                rows.append((str(layout).removeprefix("torch."), kind, windows_per_second(net, x, args.seconds)))
    base = rows[0][2]
    print(f"{device}, unet256 ngf {args.ngf}, batch {args.batch} x {args.tile}², {torch.get_num_threads()} threads")
    print(f"{'layout':<18} {'norm':<14} {'windows/s':>10} {'vs NCHW + instance_norm':>24}")
    for layout_name, kind, speed in rows:
        print(f"{layout_name:<18} {kind:<14} {speed:>10.2f} {speed / base:>23.2f}x")


if __name__ == "__main__":
    main()
