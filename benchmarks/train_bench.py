"""Training throughput: geo-sat2map's loop against a plain, straightforward pix2pix loop (same nets, same data).

    .venv/bin/python benchmarks/train_bench.py [--tiles 12] [--repeats 3] [--ngf 64 16] [--threads N]

Both loops train on the same random A|B PNG tiles with the recipe's augmentation (resize 286, crop 256,
flip), batch 1, on the CPU. "ours" is `geo_sat2map.training.train` (DataLoader keyed sampler, loss
bookkeeping, non-finite checks, progress bar off); its rate is the training steps/s of the last epoch as
recorded in metrics.jsonl (validation excluded). "plain" is the loop below. Each is run `--repeats` times,
alternating, and the best rate is kept (the machine may be shared). On a CUDA machine the table adds our
loop's rate at fp32 and bf16 for batch 1 and batch 8.
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
from geo_sat2map.training import train
from geo_sat2map.training.loop import init_weights


def make_tiles(root: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (256, 512, 3), dtype=np.uint8)).save(root / "train" / f"{i}.png")
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


def our_rate(data: Path, run: Path, overrides: dict[str, object]) -> float:
    base = {"epochs": 2, "epochs_decay": 0, "workers": 0, "seed": 0}
    train(data, run, overrides={**base, **overrides}, overwrite=True, progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return records[-1]["train_steps_per_s"]  # epoch 2: warm caches, no validation in the rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=12, help="training tiles (= steps per epoch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ngf", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: PyTorch's choice); 1 gives "
                        "stable numbers on a machine shared with other jobs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("geo_sat2map").setLevel(logging.ERROR)  # the runs have no val/ on purpose
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name() if cuda else "no GPU available"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, GPU: {gpu}")
    print(f"{'config':<22}{'ours CPU it/s':>15}{'plain CPU it/s':>16}{'ours/plain':>12}   GPU (ours, it/s)")
    with tempfile.TemporaryDirectory() as tmp:
        data = make_tiles(Path(tmp) / "tiles", args.tiles)
        for ngf in args.ngf:
            plain_rate(data, ngf, ngf, 2, torch.device("cpu"))  # warm-up: thread pools, allocator, lazy imports
            ours, plain = [], []
            for _ in range(args.repeats):
                ours.append(our_rate(data, Path(tmp) / "run", {"ngf": ngf, "ndf": ngf, "device": "cpu"}))
                plain.append(plain_rate(data, ngf, ngf, args.tiles, torch.device("cpu")))
            gpu_cell = gpu
            if cuda:
                cells = []
                for batch in (1, 8):
                    for precision in ("fp32", "bf16"):
                        rate = our_rate(data, Path(tmp) / "run", {"ngf": ngf, "ndf": ngf, "device": "cuda",
                                                                   "precision": precision, "batch_size": batch})
                        cells.append(f"b{batch} {precision} {rate:.1f}")
                gpu_cell = ", ".join(cells)
            name = f"ngf {ngf}, ndf {ngf}, batch 1"
            print(f"{name:<22}{max(ours):>15.2f}{max(plain):>16.2f}{max(ours) / max(plain):>12.2f}   {gpu_cell}")


if __name__ == "__main__":
    main()
