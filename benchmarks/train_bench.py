"""Training throughput.

    .venv/bin/python benchmarks/train_bench.py [--tiles 12] [--repeats 3] [--ngf 64 16] [--threads N]
    python benchmarks/train_bench.py --device cuda [--tiles 512] [--batches 1 16] [--baseline] [--nchw]

CPU (default): geo-sat2map's loop against a plain, straightforward pix2pix loop (same nets, same data). Both
train on the same random A|B PNG tiles with the recipe's augmentation (resize 286, crop 256, flip), batch 1.
"ours" is `geo_sat2map.training.train` (DataLoader keyed sampler, loss bookkeeping, non-finite checks,
progress bar off); its rate is the training steps/s of the last epoch as recorded in metrics.jsonl (validation
excluded). "plain" is the loop below. Each is run `--repeats` times, alternating, and the best rate is kept
(the machine may be shared).

`--device cuda` (or `--table`): the GPU acceptance table. `train` with its defaults (tiles decoded once into GPU
memory, the step as one CUDA graph, precision "auto" measured) at each `--batches` size, ngf/ndf 64, the
recipe's augmentation; with `--baseline` also the eager step fed by DataLoader workers (the path before the
GPU work; fp32 at batch 1, bf16 above, as measured then), with `--nchw` the default path with
`channels_last = false`, with `--fp32` the default path at `precision = "fp32"` (what "auto" gains). Rates are epoch 2's (`--epochs`); one-time costs
(precision measurement, tile upload, graph capture) and the peak GPU memory are listed beside them.
`--device cpu --table` runs the same table on the CPU (tiles kept in memory, eager step), e.g. with
`--tiles 4 --ngf 8` as a quick check that the script works; `--device cpu --table --fp32 --batches 1 --tiles 24
--epochs 2 --workers 0` times a CPU epoch at the default precision (auto: bf16 where the CPU has it natively)
against fp32.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from geo_sat2map.models import PatchGAN, build_generator
from geo_sat2map.training import TrainSummary, train
from geo_sat2map.training.loop import init_weights


def make_tiles(root: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    for i in range(count):  # compress_level 1: random pixels do not compress anyway
        Image.fromarray(rng.integers(0, 256, (256, 512, 3), dtype=np.uint8)).save(
            root / "train" / f"{i}.png", compress_level=1
        )
    return root


class PlainPairs(torch.utils.data.Dataset):
    """The straightforward pix2pix data path: PIL open, split, resize 286 bicubic, random crop 256, flip."""

    def __init__(self, folder: Path) -> None:
        self.paths = sorted(folder.glob("*.png"))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = Image.open(self.paths[i]).convert("RGB")
        w, h = pair.size
        out = []
        x, y = np.random.randint(0, 286 - 256 + 1, size=2)
        flip = np.random.rand() < 0.5
        for box in ((0, 0, w // 2, h), (w // 2, 0, w, h)):
            half = pair.crop(box).resize((286, 286), Image.BICUBIC).crop((x, y, x + 256, y + 256))
            t = torch.from_numpy(np.asarray(half, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
            out.append(t.flip(-1) if flip else t)
        return out[0], out[1]


def plain_rate(data: Path, ngf: int, ndf: int, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    G, D = build_generator("unet256", ngf).to(device), PatchGAN(ndf=ndf).to(device)
    init_weights(G, 0.02)
    init_weights(D, 0.02)
    opt_G = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    loader = torch.utils.data.DataLoader(PlainPairs(data / "train"), batch_size=1, shuffle=True)
    done, started = 0, 0.0
    warmup = 2
    while done < steps + warmup:
        for A, B in loader:
            if done == warmup:
                started = time.perf_counter()
            A, B = A.to(device), B.to(device)
            fake = G(A)
            for p in D.parameters():
                p.requires_grad_(True)
            opt_D.zero_grad()
            pf, pr = D(A, fake.detach()), D(A, B)
            loss_D = 0.5 * (bce(pf, torch.zeros_like(pf)) + bce(pr, torch.ones_like(pr)))
            loss_D.backward()
            opt_D.step()
            for p in D.parameters():
                p.requires_grad_(False)
            opt_G.zero_grad()
            pf = D(A, fake)
            loss_G = bce(pf, torch.ones_like(pf)) + 100 * (fake - B).abs().mean()
            loss_G.backward()
            opt_G.step()
            loss_G.detach().item()  # read the loss every step, as a training script printing progress does
            done += 1
            if done == steps + warmup:
                break
    return steps / (time.perf_counter() - started)


def our_run(data: Path, run: Path, overrides: dict[str, object]) -> tuple[float, TrainSummary]:
    """Train with ``overrides`` (2 epochs unless given); epoch 2's steps/s (warm caches, no validation)."""
    base = {"epochs": 2, "epochs_decay": 0, "workers": 0, "seed": 0}
    summary = train(data, run, overrides={**base, **overrides}, overwrite=True, progress=False)
    assert summary.last is not None  # the last epoch's record, as metrics.jsonl holds it
    return summary.last["train_steps_per_s"], summary


def compare_with_plain_loop(args: argparse.Namespace) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'config':<22}{'ours CPU it/s':>15}{'plain CPU it/s':>16}{'ours/plain':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        data = make_tiles(Path(tmp) / "tiles", args.tiles)
        for ngf in args.ngf:
            plain_rate(data, ngf, ngf, 2, torch.device("cpu"))  # warm-up: thread pools, allocator, lazy imports
            ours, plain = [], []
            for _ in range(args.repeats):
                ours.append(our_run(data, Path(tmp) / "run", {"ngf": ngf, "ndf": ngf, "device": "cpu"})[0])
                plain.append(plain_rate(data, ngf, ngf, args.tiles, torch.device("cpu")))
            name = f"ngf {ngf}, ndf {ngf}, batch 1"
            print(f"{name:<22}{max(ours):>15.2f}{max(plain):>16.2f}{max(ours) / max(plain):>12.2f}")


def acceptance_table(args: argparse.Namespace) -> list[dict[str, object]]:
    """One row per batch size (and baseline): rates, one-time costs, peak memory, and how the run trained."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    ngf = args.ngf[0]
    gpu = torch.cuda.get_device_name(device) if cuda else "no GPU (CPU run: tiles in memory, eager step)"
    print(f"torch {torch.__version__}, {gpu}; {args.tiles} random 256x512 A|B tiles, ngf/ndf {ngf}, "
          f"resize 286 + crop 256 + flip, epoch {args.epochs}'s rate")
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_tiles(Path(tmp) / "tiles", args.tiles)
        for batch in args.batches:
            ours = {"device_data": "auto" if cuda else "on"}
            variants = [("ours", ours)] + ([("ours, NCHW", {**ours, "channels_last": False})] if args.nchw else [])
            if args.fp32:
                variants.append(("ours, fp32", {**ours, "precision": "fp32"}))
            if args.baseline:
                before = "bf16" if cuda and batch > 1 else "fp32"
                variants.append(("before", {"cuda_graph": False, "device_data": "off", "precision": before}))
            for name, overrides in variants:
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                rate, summary = our_run(data, Path(tmp) / "run", {
                    "ngf": ngf, "ndf": ngf, "device": args.device, "batch_size": batch, "epochs": args.epochs,
                    "workers": args.workers, **overrides,
                })
                rows.append({"batch": batch, "variant": name, "steps_per_s": rate, "tiles_per_s": rate * batch,
                             **summary.setup})
    _print_table(rows)
    return rows


def _print_table(rows: list[dict[str, object]]) -> None:
    def seconds(row: dict[str, object], key: str) -> str:
        value = row.get(key)
        return f"{value:.2f}" if isinstance(value, float) and value else "-"

    print("| batch | run | step | data | precision | steps/s | tiles/s | precision pick s | upload s | capture s "
          "| GPU peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        peak = row.get("gpu_peak_bytes")
        memory = f"{peak / 1024**3:.1f}" if isinstance(peak, int) else "-"
        print(f"| {row['batch']} | {row['variant']} | {row['step']} | {row['data']} | {row['precision']} "
              f"| {row['steps_per_s']:.2f} | {row['tiles_per_s']:.0f} | {seconds(row, 'precision_seconds')} "
              f"| {seconds(row, 'upload_seconds')} | {seconds(row, 'capture_seconds')} | {memory} |")
    print()
    for row in rows:
        print(f"batch {row['batch']} {row['variant']}: precision: {row['precision_reason']}; step: {row['step_reason']}; "
              f"data: {row['data_reason']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default: compare with a plain loop) or cuda[:N]")
    parser.add_argument("--table", action="store_true", help="print the acceptance table (default on CUDA)")
    parser.add_argument("--tiles", type=int, help="training tiles (= steps per epoch at batch 1); "
                        "default 12 for the CPU comparison, 512 for the table")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ngf", type=int, nargs="+", help="default 64 16 (CPU comparison), 64 (table)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="table: batch sizes")
    parser.add_argument("--epochs", type=int, default=2, help="table: epochs per run; the last one's rate is shown")
    parser.add_argument("--workers", type=int, default=4, help="table: DataLoader workers (upload, baseline)")
    parser.add_argument("--baseline", action="store_true", help="table: add the eager + DataLoader-workers rows")
    parser.add_argument("--nchw", action="store_true", help="table: add rows with channels_last = false")
    parser.add_argument("--json", type=Path, help="table: write its rows to this JSON file")
    parser.add_argument("--fp32", action="store_true", help="table: add rows with precision = fp32")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: PyTorch's choice); 1 gives "
                        "stable numbers on a machine shared with other jobs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("geo_sat2map").setLevel(logging.ERROR)  # the runs have no val/ on purpose
    if args.table or args.device.startswith("cuda"):
        args.tiles = args.tiles or 512
        args.ngf = args.ngf or [64]
        rows = acceptance_table(args)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1, default=str))
    else:
        args.tiles = args.tiles or 12
        args.ngf = args.ngf or [64, 16]
        compare_with_plain_loop(args)


if __name__ == "__main__":
    main()
