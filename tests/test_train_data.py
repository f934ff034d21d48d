"""Training data: folder checks, dataset.json, paired augmentation and deterministic sample keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from geo_sat2map.errors import UserError
from geo_sat2map.scaling import InputScaling
from geo_sat2map.training.data import (
    Augmentation,
    EpochKeyedSampler,
    PairDataset,
    dataset_hash,
    evenly_spaced,
    scan_dataset,
    worker_error,
)

from .train_fixtures import make_tiles_folder, synthetic_pair, write_pair


def _unit(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8.astype(np.float32) / 127.5 - 1)


def test_scan_reads_tiles_and_manifest(tmp_path):
    root = make_tiles_folder(tmp_path / "tiles", 3, 2)
    info = scan_dataset(root)
    assert [p.name for p in info.train] == ["train_000.png", "train_001.png", "train_002.png"]
    assert len(info.val) == 2 and info.tile_size == 256
    assert info.bands == (3, 2, 1) and info.resolution == 2.5 and info.crs == "EPSG:32618"
    assert info.scaling == InputScaling("percentile", (10.0, 20.0, 30.0), (900.0, 950.0, 1000.0), (2.0, 98.0))


def test_pix2pix_folder_without_manifest_or_val(tmp_path):
    root = make_tiles_folder(tmp_path / "p2p", 2, 0, manifest=False)
    info = scan_dataset(root)
    assert info.val == () and info.scaling is None and info.bands is None and info.resolution is None


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing", "does not exist"),
        ("no-train", "has no train/ folder"),
        ("empty-train", "holds no .png/.jpg tiles"),
        ("mixed", "tiles of mixed sizes"),
        ("not-pair", "is not an A|B pair"),
        ("grey", "image mode is L, expected 8-bit RGB"),
        ("manifest", "says tile_size 512 but the tiles are 256"),
        ("bit-flip", "a.png: cannot read image"),
        ("truncated-jpeg", "a.jpg: cannot read image"),
    ],
)
def test_bad_folders(tmp_path, case, match):
    root = tmp_path / "data"
    rgb = np.zeros((256, 512, 3), np.uint8)
    if case == "no-train":
        (root / "val").mkdir(parents=True)
    elif case == "empty-train":
        (root / "train").mkdir(parents=True)
        (root / "train" / "notes.txt").write_text("not a tile")
    elif case == "mixed":
        _write(root / "train" / "a.png", rgb)
        _write(root / "val" / "b.png", np.zeros((128, 256, 3), np.uint8))
    elif case == "not-pair":
        _write(root / "train" / "a.png", np.zeros((256, 256, 3), np.uint8))
    elif case == "grey":
        _write(root / "train" / "a.png", np.zeros((256, 512), np.uint8))
    elif case == "bit-flip":  # one flipped bit in the pixel data: Pillow would decode it without a word
        path = _write(root / "train" / "a.png", np.random.default_rng(0).integers(0, 255, (256, 512, 3), np.uint8))
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 4
        path.write_bytes(bytes(data))
    elif case == "truncated-jpeg":
        (root / "train").mkdir(parents=True)
        Image.fromarray(np.full((256, 512, 3), 90, np.uint8)).save(root / "train" / "b.jpg")
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 512, 3), np.uint8)).save(root / "t.jpg")
        (root / "train" / "a.jpg").write_bytes((root / "t.jpg").read_bytes()[:20_000])
    elif case == "manifest":
        make_tiles_folder(root, 1, 0)
        manifest = json.loads((root / "dataset.json").read_text())
        (root / "dataset.json").write_text(json.dumps({**manifest, "tile_size": 512}))
    with pytest.raises(UserError, match=match):
        scan_dataset(root)


def _dihedral(image: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for k in range(4):
        r = torch.rot90(image, k, dims=(-2, -1))
        out += [r, r.flip(-1)]
    return out


def test_augmentation_is_identical_for_a_and_b_and_varies_by_epoch(tmp_path):
    rng = np.random.default_rng(3)
    a, _ = synthetic_pair(rng)
    (tmp_path / "t").mkdir()
    write_pair(tmp_path / "t" / "same.png", a, a)  # B == A: any misalignment would show
    augment = Augmentation(load_size=286, crop_size=256, flip=True, vflip=True, rot90=True)
    dataset = PairDataset([tmp_path / "t" / "same.png"], 256, augment, seed=7)
    samples = [dataset[(epoch, 0)] for epoch in range(6)]
    for A, B in samples:
        assert A.shape == B.shape == (3, 256, 256) and A.dtype == torch.float32
        assert torch.equal(A, B)
        assert A.min() >= -1 and A.max() <= 1
    assert len({A.numpy().tobytes() for A, _ in samples}) > 1  # crops/flips change between epochs
    again = PairDataset([tmp_path / "t" / "same.png"], 256, augment, seed=7)[(4, 0)][0]
    assert torch.equal(again, samples[4][0])  # same key, same sample


def test_without_resize_the_sample_is_an_exact_flip_or_rotation(tmp_path):
    rng = np.random.default_rng(4)
    a, b = synthetic_pair(rng)
    (tmp_path / "t").mkdir()
    write_pair(tmp_path / "t" / "p.png", a, b)
    augment = Augmentation(load_size=256, crop_size=256, map_resample="nearest", flip=True, vflip=True, rot90=True)
    dataset = PairDataset([tmp_path / "t" / "p.png"], 256, augment)
    seen = set()
    for epoch in range(12):
        A, B = dataset[(epoch, 0)]
        matches = [i for i, t in enumerate(_dihedral(_unit(a))) if torch.equal(t, A)]
        assert matches and torch.equal(_dihedral(_unit(b))[matches[0]], B)
        seen.add(matches[0])
    assert len(seen) > 2


def test_validation_items_are_centre_crops_with_uint8_targets_and_the_tiles_mask(tmp_path):
    rng = np.random.default_rng(5)
    a, b = synthetic_pair(rng, size=512)
    (tmp_path / "v").mkdir()
    write_pair(tmp_path / "v" / "big.png", a, b)
    A, B, valid = PairDataset([tmp_path / "v" / "big.png"], 256)[0]
    assert torch.equal(A, _unit(a[:, 128:384, 128:384]))
    assert B.dtype == torch.uint8 and np.array_equal(B.numpy(), b[:, 128:384, 128:384])
    assert valid.dtype == torch.bool and valid.shape == (256, 256) and valid.all()  # no mask file: all valid
    mask = np.full((512, 512), 255, np.uint8)
    mask[:200, :] = 0  # make-tiles' masks/<split>/<id>.png: nodata along the top
    (tmp_path / "masks" / "v").mkdir(parents=True)
    Image.fromarray(mask).save(tmp_path / "masks" / "v" / "big.png")
    _, _, valid = PairDataset([tmp_path / "v" / "big.png"], 256)[0]
    assert np.array_equal(valid.numpy(), mask[128:384, 128:384] > 0) and not valid[:72].any() and valid[72:].all()


def test_sampler_keys_resume_offsets_and_process_split():
    data = list(range(10))
    sampler = EpochKeyedSampler(data, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    assert sorted(i for _, i in full) == data and {e for e, _ in full} == {2}
    sampler.start = 4
    assert list(sampler) == full[4:] and len(sampler) == 6
    sampler.start = 0
    sampler.set_epoch(3)
    assert [i for _, i in sampler] != [i for _, i in full]
    ranks = [EpochKeyedSampler(data, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(2)
    assert sorted(i for s in ranks for _, i in s) == data


@pytest.mark.slow
def test_worker_processes_do_not_change_the_batches(tmp_path):
    info = scan_dataset(make_tiles_folder(tmp_path / "d", 4, 0))
    dataset = PairDataset(info.train, 256, Augmentation(272, 256), seed=1)

    def batches(workers):
        sampler = EpochKeyedSampler(dataset, seed=1)
        sampler.set_epoch(1)
        return [torch.cat(batch) for batch in DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers)]

    for x, y in zip(batches(0), batches(2)):
        assert torch.equal(x, y)


def test_an_error_in_a_worker_process_is_its_own_one_line_message(tmp_path):
    info = scan_dataset(make_tiles_folder(tmp_path / "d", 2, 0))
    info.train[1].write_bytes(info.train[1].read_bytes()[:5000])  # damaged after the scan, e.g. mid-run
    loader = DataLoader(PairDataset(info.train, 256), batch_size=1, num_workers=1)
    with pytest.raises(UserError) as err:
        list(loader)
    assert "Traceback" in str(err.value)  # how torch re-raises it: the worker's traceback is the message
    assert str(worker_error(err.value)) == f"{info.train[1]}: cannot read image (image file is truncated)"
    assert worker_error(err.value.__class__("plain")).args == ("plain",)


def test_dataset_hash_names_the_bytes(tmp_path):
    root = make_tiles_folder(tmp_path / "h", 2, 1)
    before = dataset_hash(scan_dataset(root))
    assert dataset_hash(scan_dataset(root)) == before
    write_pair(root / "val" / "val_000.png", *synthetic_pair(np.random.default_rng(99)))
    assert dataset_hash(scan_dataset(root)) != before


def test_evenly_spaced_subset():
    items = [f"t{i}" for i in range(10)]
    assert evenly_spaced(items, 0) == items and evenly_spaced(items, 20) == items
    assert evenly_spaced(items, 3) == ["t0", "t3", "t6"]
