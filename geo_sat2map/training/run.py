"""``train()``: one training run in RUN_DIR, fresh or resumed, single- or multi-process.

Files in RUN_DIR are rewritten atomically at the end of every epoch, ``checkpoint.pt`` last, so a
crash at any point leaves a consistent run that ``--resume`` continues from the last finished epoch.
Ctrl-C, SIGTERM and SIGHUP finish the current step, save a mid-epoch checkpoint and return normally.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geo_sat2map.atomic import atomic_output
from geo_sat2map.checkpoint import GeneratorMeta, save_generator
from geo_sat2map.device import resolve_device
from geo_sat2map.errors import UserError, first_line, stop_signals
from geo_sat2map.metrics import to_uint8
from geo_sat2map.progress import progress_bar
from geo_sat2map.training import distributed, report
from geo_sat2map.training.config import (
    TrainConfig,
    changed_keys,
    check_resumable,
    config_from_mapping,
    config_to_toml,
    read_config_file,
)
from geo_sat2map.training.data import (
    Augmentation,
    DatasetInfo,
    EpochKeyedSampler,
    PairDataset,
    check_fits,
    dataset_hash,
    evenly_spaced,
    make_loader,
    scan_dataset,
    training_palette,
    worker_error,
)
from geo_sat2map.training.device_data import DeviceFeed, DeviceTiles, DeviceValSet, WorkerFeed, plan_device_data
from geo_sat2map.training.distributed import DistContext
from geo_sat2map.training.loop import LOSS_NAMES, Pix2Pix, validate
from geo_sat2map.training.precision import PrecisionChoice, choose_precision
from geo_sat2map.training.steps import plan_graph, step_runner
from geo_sat2map.training.state import capture_rng, load_checkpoint, restore_rng, save_checkpoint, seed_everything

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
GENERATOR = "generator.pt"
BEST_GENERATOR = "generator_best.pt"
CONFIG = "config.toml"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
SAMPLES = "samples"
RUN_FILES = (CHECKPOINT, GENERATOR, BEST_GENERATOR, CONFIG, METRICS, CURVES)
# Changing these on --resume changes nothing about the numbers the run produces (or only extends it).
# device_data is among them: both data paths feed the step bit-identical batches.
RUNTIME_KEYS = frozenset({
    "workers", "val_max_tiles", "sample_tiles", "epochs", "epochs_decay", "device_data", "device_data_share",
})
VAL_BATCH = 8
# Losses (and the non-finite check on them) are read back from the GPU once every this many steps: between
# read-backs the host queues steps without waiting. On CPU reading costs nothing, so every step.
GPU_SYNC_EVERY = 10


@dataclass
class TrainSummary:
    run_dir: Path
    epochs_done: int
    total_epochs: int
    interrupted: bool  # stopped by Ctrl-C/SIGTERM/SIGHUP; continue with --resume
    last: dict[str, Any] | None  # the last epoch's metrics record
    best_epoch: int | None
    best_val_l1: float | None
    train_steps_per_s: float | None  # training steps/s in this invocation (validation excluded)
    replica_digests: list[str] | None = None  # per-process weight hashes of a multi-process run
    main_process: bool = True  # False in the other processes of a torchrun launch (they stay silent)
    # How this invocation trained and what it cost once: precision/step/data (+ _reason), precision_seconds,
    # upload_seconds, capture_seconds, and gpu_peak_bytes on CUDA.
    setup: dict[str, Any] = field(default_factory=dict)


def train(
    data_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    *,
    config_file: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainSummary:
    """Train pix2pix on DATA_DIR's A|B tiles into RUN_DIR (see the README's train section)."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other: continue the run, or replace it")
    _check_run_dir(run_dir, resume, overwrite)
    stored = load_checkpoint(run_dir / CHECKPOINT) if resume else None
    config = _resolve_config(config_file, overrides or {}, stored, run_dir)
    info = scan_dataset(data_dir)
    check_fits(info, config.crop_size)
    ctx = distributed.context_from_env()
    device = distributed.start(ctx, resolve_device(config.device))
    if not ctx.is_main:
        logging.getLogger("geo_sat2map.training").setLevel(logging.WARNING)
    try:
        precision = choose_precision(config, device, ctx, stored.get("auto_precision") if stored else None)
        return _Run(info, run_dir, config, ctx, device, precision, stored, overwrite, progress).run()
    except torch.cuda.OutOfMemoryError:
        raise UserError(
            f"GPU out of memory at batch_size {config.batch_size}, ngf {config.ngf}, crop_size {config.crop_size}: "
            "lower --batch-size or --ngf, or use --precision bf16"
        ) from None
    except UserError as exc:  # e.g. a tile damaged mid-run, read in a DataLoader worker: one line, not its traceback
        plain = worker_error(exc)
        if plain is exc:
            raise
        raise plain from exc
    finally:
        distributed.stop(ctx)


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"RUN_DIR {run_dir} is a file; give a folder for the run")
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if resume and not existing:
        raise UserError(f"RUN_DIR {run_dir} holds no run to resume; drop --resume to start one there")
    if existing and not (resume or overwrite):
        raise UserError(
            f"RUN_DIR {run_dir} already holds a run ({existing[0]}); pass --resume to continue it "
            "or --overwrite to start again"
        )


def _resolve_config(
    config_file: str | os.PathLike[str] | None, overrides: dict[str, Any], stored: dict[str, Any] | None, run_dir: Path
) -> TrainConfig:
    """Defaults (or the resumed run's config), then the config file, then command-line overrides."""
    base = config_from_mapping(stored["config"], str(run_dir / CHECKPOINT)) if stored else TrainConfig()
    config = base
    layers = [(read_config_file(config_file), str(config_file))] if config_file is not None else []
    for values, source in layers + [(overrides, "the command line")]:
        config = config_from_mapping(values, source, config)
        if stored:
            check_resumable(base, config, run_dir, source)
    if stored:
        for key, (old, new) in changed_keys(base, config).items():
            level = logging.INFO if key in RUNTIME_KEYS else logging.WARNING
            note = "" if key in RUNTIME_KEYS else " (the resumed run is no longer an exact continuation)"
            log.log(level, "resume: %s changed from %r to %r%s", key, old, new, note)
    return config


class StopRequest:
    """Ctrl-C, SIGTERM and SIGHUP request a clean stop (finish the step, save, exit 0); a second Ctrl-C aborts. A
    stop signal inherited as ignored (``nohup`` ignores SIGHUP) stays ignored."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, *stop_signals()):
                if sig == signal.SIGINT or signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s: stopping after this step and saving a checkpoint (Ctrl-C again aborts without saving)",
                    "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name)

    def __exit__(self, *_exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Run:
    def __init__(
        self,
        info: DatasetInfo,
        run_dir: Path,
        config: TrainConfig,
        ctx: DistContext,
        device: torch.device,
        precision: PrecisionChoice,
        stored: dict[str, Any] | None,
        overwrite: bool,
        progress: bool,
    ) -> None:
        self.info, self.run_dir, self.config, self.ctx = info, run_dir, config, ctx
        self.device, self.stored, self.progress = device, stored, progress
        self.precision, self.dtype = precision, precision.dtype
        self.overwrite = overwrite
        self.graphed, step_reason = plan_graph(config, device, self.dtype, ctx)
        self.setup: dict[str, Any] = {
            "precision": precision.label, "precision_reason": precision.reason,
            "precision_seconds": precision.seconds,
            "step": "CUDA graph" if self.graphed else "eager", "step_reason": step_reason,
        }
        self.norm_mode = config.inference_norm_mode()
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.epoch = 0  # finished epochs
        self.epoch_samples = 0  # samples this process has trained on in the unfinished epoch
        self.loss_sum = torch.zeros(len(LOSS_NAMES), device=device)
        self.global_step = 0
        self.train_seconds = 0.0
        self.train_steps = 0
        self.epoch_rate: float | None = None  # training steps/s of the last epoch (this invocation's part)

    # ---- set-up -------------------------------------------------------------------------------------------
    def run(self) -> TrainSummary:
        config, ctx = self.config, self.ctx
        self.dataset_hash = dataset_hash(self.info) if ctx.is_main else ""
        self.palette = training_palette(self.info, config.seed) if ctx.is_main else None  # stored in generator.pt
        distributed.barrier(ctx)  # every process has checked its inputs before anything is written
        if ctx.is_main:
            self._prepare_run_dir()
        distributed.barrier(ctx)
        self.model = Pix2Pix(config, self.device, self.dtype, ctx, graphed=self.graphed)
        seed_everything(config.seed + ctx.rank)  # dropout draws differ between processes
        if self.stored:
            try:
                self._restore(self.stored)
            except torch.cuda.OutOfMemoryError:
                raise
            except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:  # loaded, but does not fit
                raise UserError(
                    f"{self.run_dir / CHECKPOINT}: damaged training checkpoint, cannot resume from it "
                    f"({type(exc).__name__}: {first_line(exc)}); start the run again with --overwrite"
                ) from exc
            self.stored = None  # the weights now live in the model; let the loaded copy go
            if ctx.is_main and self.history:  # drop lines of an epoch whose checkpoint was never written
                report.write_metrics(self.run_dir / METRICS, self.history)
        if self.epoch >= config.total_epochs:
            log.info("%s is already trained for %d epochs; raise --epochs/--epochs-decay to continue",
                     self.run_dir, self.epoch)
            return self._summary(interrupted=False)
        self._build_loaders()  # after the restore: nothing here draws from the random streams
        self.stepper = step_runner(self.model, self.feed.prepare, self.loss_sum, config.batch_size)
        self._log_start()
        with StopRequest() as stop:
            while self.epoch < config.total_epochs:
                if not self._train_epoch(stop):
                    self._save_checkpoint()
                    return self._summary(interrupted=True)
                self._end_epoch()
                if distributed.any_true(ctx, [stop.requested], self.device)[0]:
                    return self._summary(interrupted=True)
        digests = distributed.replica_digests(ctx, [self.model.G, self.model.D]) if ctx.enabled else None
        if digests:
            log.info("replica weights sha256: %s", ", ".join(f"rank {r} {d}" for r, d in enumerate(digests)))
        return self._summary(interrupted=False, digests=digests)

    def _prepare_run_dir(self) -> None:
        run_dir = self.run_dir
        if self.overwrite:
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
            for old in (run_dir / SAMPLES).glob("epoch_*.png"):
                old.unlink()
        try:
            (run_dir / SAMPLES).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create RUN_DIR {run_dir} ({exc.strerror})") from None
        header = "geo-sat2map train: the resolved config of this run (reuse it with --config)"
        with atomic_output(run_dir / CONFIG, overwrite=True, what="config") as tmp:
            tmp.write_text(config_to_toml(self.config, header))

    def _build_loaders(self) -> None:
        config, ctx, info = self.config, self.ctx, self.info
        augment = Augmentation(
            config.load_size, config.crop_size, config.map_resample, config.flip, config.vflip, config.rot90
        )
        train_set = PairDataset(info.train, config.crop_size, augment, seed=config.seed)
        self.sampler = EpochKeyedSampler(train_set, ctx.world_size, ctx.rank, seed=config.seed)
        workers, memory_format = config.workers, self.model.memory_format
        self.val_paths = evenly_spaced(info.val, config.val_max_tiles)
        val_set = PairDataset(self.val_paths, config.crop_size)
        plan = plan_device_data(
            config.device_data, self.device, len(info.train), config.load_size,
            len(self.val_paths) if ctx.is_main else 0, config.crop_size, config.device_data_share,
        )
        where = "in GPU memory" if self.device.type == "cuda" else "in memory"
        self.setup.update(data=where if plan.on_device else "DataLoader workers", data_reason=plan.reason)
        if plan.on_device:
            tiles = DeviceTiles(train_set, self.device, workers)
            self.setup["upload_seconds"] = tiles.upload_seconds
            self.feed: DeviceFeed | WorkerFeed = DeviceFeed(tiles, self.sampler, config.batch_size, memory_format)
        else:
            loader = make_loader(
                train_set,
                workers,
                batch_size=config.batch_size,
                sampler=self.sampler,
                pin_memory=self.device.type == "cuda",
                persistent_workers=workers > 0,
            )
            self.feed = WorkerFeed(loader, memory_format)
        if plan.on_device and ctx.is_main and self.val_paths:
            self.val_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] = (
                DeviceValSet(val_set, self.device, workers).batches
            )
        else:
            self.val_batches = lambda: make_loader(val_set, min(workers, 2), batch_size=VAL_BATCH)
        sample_paths = evenly_spaced(info.val or info.train, config.sample_tiles)
        self.sample_set = PairDataset(sample_paths, config.crop_size)
        self.steps_per_epoch = math.ceil(self.sampler.num_samples / config.batch_size)

    def _restore(self, stored: dict[str, Any]) -> None:
        ctx = self.ctx
        self.model.load_state_dict(stored["model"])
        self.epoch = int(stored["epoch"])
        self.global_step = int(stored["global_step"])
        self.history = [dict(r) for r in stored["history"]]
        self.best = dict(stored["best"])
        per_process = stored["processes"]
        if stored["dataset_hash"] and self.dataset_hash and stored["dataset_hash"] != self.dataset_hash:
            log.warning("resume: the tiles in %s changed since this run started; it continues on the new data",
                        self.info.root)
        if len(per_process) == ctx.world_size:
            restore_rng(per_process[ctx.rank]["rng"])
            self.epoch_samples = int(stored["epoch_samples"])
            self.loss_sum.copy_(per_process[ctx.rank]["loss_sum"])  # in place: the step adds to this tensor
        else:
            log.warning("resume: %d processes now, %d before; epoch %d restarts from its beginning",
                        ctx.world_size, len(per_process), self.epoch + 1)
            seed_everything(self.config.seed + 1000 * self.epoch + ctx.rank)
        if self.epoch_samples:
            log.info("Resuming %s in epoch %d after %d steps", self.run_dir, self.epoch + 1,
                     self.epoch_samples // self.config.batch_size)
        else:
            log.info("Resuming %s after epoch %d", self.run_dir, self.epoch)

    def _log_start(self) -> None:
        c, info = self.config, self.info
        val = f"{len(self.val_paths)} val tiles"
        if len(self.val_paths) < len(info.val):  # say that the cap, not the dataset, sets the number
            val = f"{len(self.val_paths)} of {len(info.val)} val tiles (val_max_tiles {c.val_max_tiles})"
        log.info(
            "Training %s (ngf %d) on %d train / %s of %d px from %s: epochs %d-%d of %d "
            "(constant LR %g for %d, linear decay over %d), batch %d x %d process(es), %s, %s; "
            "inference norm '%s'",
            c.arch, c.ngf, len(info.train), val, info.tile_size, info.root, self.epoch + 1,
            c.total_epochs, c.total_epochs, c.lr, c.epochs, c.epochs_decay, c.batch_size, self.ctx.world_size,
            self.device, self.precision.label, self.norm_mode,
        )
        setup = self.setup
        log.info("precision: %s (%s)", setup["precision"], setup["precision_reason"])
        log.info("step: %s (%s)", setup["step"], setup["step_reason"])
        uploaded = f", decoded in {setup['upload_seconds']:.1f} s" if "upload_seconds" in setup else ""
        log.info("data: %s (%s%s)", setup["data"], setup["data_reason"], uploaded)
        if not info.val:
            log.warning("%s has no val/ tiles: no validation metrics and no best generator", info.root)

    # ---- training -----------------------------------------------------------------------------------------
    def _train_epoch(self, stop: StopRequest) -> bool:
        """Train the unfinished epoch to its end (True) or until a stop request (False)."""
        config, ctx = self.config, self.ctx
        lr = self.model.set_epoch_lr(self.epoch)
        self.sampler.set_epoch(self.epoch)
        self.sampler.start = self.epoch_samples
        if self.epoch_samples == 0:
            self.loss_sum.zero_()
        step = self.epoch_samples // config.batch_size
        sync_every = 1 if self.device.type == "cpu" else GPU_SYNC_EVERY
        bar = progress_bar(
            total=self.steps_per_epoch, initial=step, desc=f"epoch {self.epoch + 1}/{config.total_epochs}",
            unit="it", disable=not (self.progress and ctx.is_main), leave=False, dynamic_ncols=True,
        )
        first_step = step
        started = time.perf_counter()
        try:
            batches = iter(self.feed)
            raw = next(batches, None)
            while raw is not None:
                losses = self.stepper(raw)  # also adds them to self.loss_sum, on the device
                size = raw[0].shape[0]
                raw = next(batches, None)  # prepared on the host while the GPU runs this step, even before a sync
                step += 1
                self.global_step += 1
                self.epoch_samples += size
                bar.update(1)
                if step % sync_every and step != self.steps_per_epoch:
                    continue
                read_back = torch.cat([losses, self.loss_sum]).tolist()  # the interval's one host sync
                current = read_back[: len(LOSS_NAMES)]
                nonfinite = not all(math.isfinite(v) for v in read_back[len(LOSS_NAMES) :])
                stop_now, diverged = distributed.any_true(ctx, [stop.requested, nonfinite], self.device)
                if diverged:
                    self._diverged(step, current)
                bar.set_postfix({name: f"{v:.3g}" for name, v in zip(("D", "G_GAN", "G_L1"), current)}, refresh=False)
                if stop_now and step < self.steps_per_epoch:
                    log.warning("Stopped in epoch %d after step %d/%d (lr %g)", self.epoch + 1, step,
                                self.steps_per_epoch, lr)
                    return False
            return True
        finally:
            bar.close()
            elapsed = time.perf_counter() - started
            self.train_seconds += elapsed
            self.train_steps += step - first_step
            self.epoch_rate = (step - first_step) / elapsed if elapsed > 0 else None

    def _diverged(self, step: int, losses: list[float]) -> None:
        values = ", ".join(f"{n}={v:.4g}" for n, v in zip(LOSS_NAMES, losses))
        kept = (
            f"the last good checkpoint ({self.run_dir / CHECKPOINT}, epoch {self.epoch}) is kept; "
            if (self.run_dir / CHECKPOINT).exists() else "no checkpoint had been written yet; "
        )
        raise UserError(
            f"training diverged: non-finite loss in epoch {self.epoch + 1} by step {step} ({values}); {kept}"
            "lower --lr, use --precision bf16 or fp32 instead of fp16, or check the tiles"
        )

    def _end_epoch(self) -> None:
        ctx = self.ctx
        means = distributed.mean_over_processes(ctx, self.loss_sum / self.steps_per_epoch).tolist()
        record: dict[str, Any] = {"epoch": self.epoch + 1, "lr": self.model.lr,
                                  "steps": self.global_step, **dict(zip(LOSS_NAMES, means))}
        if ctx.is_main:
            self._validate_and_write(record)
        self.epoch += 1
        self.epoch_samples = 0
        self.loss_sum.zero_()
        self._save_checkpoint()

    def _validate_and_write(self, record: dict[str, Any]) -> None:
        net = self.model.inference_generator(self.norm_mode)
        if self.val_paths:
            record.update(validate(self.model, net, self.val_batches()))
            improved = not self.best or record["val_l1"] < self.best["val_l1"]
            record["best"] = improved
            if improved:
                self.best = {"epoch": record["epoch"], "val_l1": record["val_l1"]}
        if self.epoch_rate:
            record["train_steps_per_s"] = self.epoch_rate
        self.history.append(record)
        epoch = record["epoch"]
        self._write_generator(self.run_dir / GENERATOR, epoch, record)
        if record.get("best"):
            _same_file(self.run_dir / GENERATOR, self.run_dir / BEST_GENERATOR)
        self._write_samples(net, epoch)
        report.write_metrics(self.run_dir / METRICS, self.history)
        report.write_curves(self.run_dir / CURVES, self.history)
        log.info("epoch %d/%d: %s", epoch, self.config.total_epochs, _describe(record))

    def _write_generator(self, path: Path, epoch: int, record: dict[str, Any]) -> None:
        meta = GeneratorMeta(
            arch=self.config.arch,
            width=self.config.ngf,
            norm_mode=self.norm_mode,
            bands=self.info.bands,
            band_roles=self.info.band_roles,
            scaling=self.info.scaling,
            tile_size=self.config.crop_size,
            resolution=self.info.resolution,
            resolution_m=self.info.resolution_m,
            crs_kind=self.info.crs_kind,
            provenance={
                "config": asdict(self.config),
                "epochs": epoch,
                "dataset_hash": self.dataset_hash,
                "dataset": str(self.info.root.resolve()),
                "crs": self.info.crs,
                "val": {k: v for k, v in record.items() if k.startswith("val_")},
            },
            palette=self.palette,
        )
        save_generator(path, self.model.G, meta)

    def _write_samples(self, net: Any, epoch: int) -> None:
        inputs, targets, _ = zip(*(self.sample_set[i] for i in range(len(self.sample_set))))
        A = torch.stack(inputs)
        predictions = self.model.predict(net, A)
        report.write_samples(
            self.run_dir / SAMPLES / f"epoch_{epoch:03d}.png", to_uint8(A), predictions, np.stack(targets)
        )

    def _save_checkpoint(self) -> None:
        """Every process contributes its RNG state and partial losses; rank 0 writes."""
        mine = {"rng": capture_rng(), "loss_sum": self.loss_sum.detach().cpu()}
        processes = distributed.gather(self.ctx, mine)
        if self.ctx.is_main:
            save_checkpoint(
                self.run_dir / CHECKPOINT,
                {
                    "config": asdict(self.config),
                    "epoch": self.epoch,
                    "epoch_samples": self.epoch_samples,
                    "global_step": self.global_step,
                    "model": self.model.state_dict(),
                    "history": self.history,
                    "best": self.best,
                    "dataset_hash": self.dataset_hash,
                    "processes": processes,
                    "auto_precision": self.precision.record,
                },
            )
        distributed.barrier(self.ctx)

    def _summary(self, interrupted: bool, digests: list[str] | None = None) -> TrainSummary:
        stepper = getattr(self, "stepper", None)  # none when there was nothing left to train
        if stepper is not None and stepper.capture_seconds is not None:
            self.setup["capture_seconds"] = stepper.capture_seconds
        if self.device.type == "cuda":
            self.setup["gpu_peak_bytes"] = torch.cuda.max_memory_allocated(self.device)
        return TrainSummary(
            run_dir=self.run_dir,
            epochs_done=self.epoch,
            total_epochs=self.config.total_epochs,
            interrupted=interrupted,
            last=self.history[-1] if self.history else None,
            best_epoch=self.best.get("epoch"),
            best_val_l1=self.best.get("val_l1"),
            train_steps_per_s=self.train_steps / self.train_seconds if self.train_seconds else None,
            replica_digests=digests,
            main_process=self.ctx.is_main,
            setup=self.setup,
        )


def _same_file(source: Path, dest: Path) -> None:
    """Make ``dest`` a copy of ``source`` atomically: a hard link where the file system allows (no bytes to
    write; the next epoch's generator.pt is a new file, so the link keeps this one), else a copy."""
    with atomic_output(dest, overwrite=True, what="generator") as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def _describe(record: dict[str, Any]) -> str:
    parts = [f"D {record['loss_D']:.3f}", f"G_GAN {record['loss_G_GAN']:.3f}", f"G_L1 {record['loss_G_L1']:.3f}"]
    if "val_l1" in record:
        parts.append(
            f"val L1 {record['val_l1']:.2f} PSNR {record['val_psnr']:.2f} SSIM {record['val_ssim']:.3f} "
            f"acc5 {record['val_acc_5']:.3f} acc10 {record['val_acc_10']:.3f}" + (" (best)" if record["best"] else "")
        )
    if "train_steps_per_s" in record:
        parts.append(f"{record['train_steps_per_s']:.2f} it/s")
    return ", ".join(parts)


def resume_hint(data_dir: str | os.PathLike[str], run_dir: str | os.PathLike[str]) -> str:
    return f"geo-sat2map train {shlex.quote(str(data_dir))} -o {shlex.quote(str(run_dir))} --resume"
