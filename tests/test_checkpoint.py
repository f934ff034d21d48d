import os
import warnings

import numpy as np
import pytest
import torch

from geo_sat2map.checkpoint import GeneratorMeta, load_generator, save_generator
from geo_sat2map.errors import CheckpointError
from geo_sat2map.models import PatchGAN
from geo_sat2map.scaling import InputScaling


X = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))


def _expected(net, mode):
    from geo_sat2map.models import prepare_for_inference

    return prepare_for_inference(net, mode)(X)


def _assert_same_outputs(loaded, net, mode):
    assert torch.equal(loaded.for_inference()(X), _expected(net, mode))


def _pix2pix_state(net, *, with_nbt=True, prefix=""):
    state = {prefix + k: v.clone() for k, v in net.state_dict().items() if with_nbt or "num_batches_tracked" not in k}
    return state


@pytest.mark.parametrize(
    "form",
    ["zip", "legacy-no-num-batches", "module-prefix", "compile-prefix"],
)
def test_public_pix2pix_state_dicts_load_exactly(form, small_unet, tmp_path):
    path = tmp_path / "latest_net_G.pth"
    if form == "zip":
        torch.save(_pix2pix_state(small_unet), path)
    elif form == "legacy-no-num-batches":
        torch.save(_pix2pix_state(small_unet, with_nbt=False), path, _use_new_zipfile_serialization=False)
    elif form == "module-prefix":
        torch.save(_pix2pix_state(small_unet, prefix="module."), path)
    else:
        torch.save(_pix2pix_state(small_unet, prefix="_orig_mod."), path)
    loaded = load_generator(path)
    assert (loaded.meta.arch, loaded.meta.width, loaded.meta.norm_mode) == ("unet256", 8, "instance")
    assert loaded.meta.source_format == "pix2pix"
    assert loaded.meta.scaling is None
    _assert_same_outputs(loaded, small_unet, "instance")
    # weights are loaded into uninitialised storage: what the file lacks gets BatchNorm's initial value
    counters = [b for n, b in loaded.net.named_buffers() if n.endswith("num_batches_tracked")]
    assert counters and all(int(c) == (0 if form == "legacy-no-num-batches" else int(c)) for c in counters)
    assert all(torch.isfinite(t).all() for t in loaded.net.state_dict().values() if t.is_floating_point())


def test_seed_gen_pth_tar_loads_with_running_stats(small_seed, tmp_path):
    path = tmp_path / "gen.pth.tar"
    opt = torch.optim.Adam(small_seed.parameters(), lr=2e-4, betas=(0.5, 0.999))
    small_seed(torch.randn(1, 3, 256, 256)).mean().backward()
    opt.step()
    torch.save({"state_dict": small_seed.state_dict(), "optimizer": opt.state_dict()}, path)
    loaded = load_generator(path)
    assert (loaded.meta.arch, loaded.meta.width, loaded.meta.norm_mode) == ("seed-unet", 8, "running")
    assert loaded.meta.source_format == "seed"
    _assert_same_outputs(loaded, small_seed, "running")


@pytest.mark.parametrize("arch,fixture", [("unet256", "small_unet"), ("seed-unet", "small_seed")])
def test_own_format_round_trips_weights_and_metadata(arch, fixture, request, tmp_path):
    net = request.getfixturevalue(fixture)
    meta = GeneratorMeta(
        arch=arch,
        width=8,
        norm_mode="running",
        bands=(3, 2, 1),
        band_roles=("red", "green", "blue"),
        scaling=InputScaling("percentile", (10.0, 20.0, 30.0), (4000.0, 5000.0, 6000.0), (2.0, 98.0)),
        tile_size=256,
        resolution=0.5,
        provenance={"epochs": 3, "dataset_hash": "abc", "config": {"lr": 0.0002}},
    )
    path = tmp_path / "generator.pt"
    save_generator(path, net, meta)
    loaded = load_generator(path)
    assert loaded.meta.to_dict() == meta.to_dict() and loaded.meta.band_roles == ("red", "green", "blue")
    assert loaded.meta.source_format == "geo-sat2map-generator"
    assert len(loaded.sha256) == 64
    _assert_same_outputs(loaded, net, "running")
    # the norm mode can be overridden at load time
    assert torch.equal(loaded.for_inference("instance")(X), _expected(net, "instance"))
    assert not list(tmp_path.glob("*.part"))


def test_pickled_module_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_generator(path)
    assert not marker.exists()


def test_whole_module_save_is_refused(small_unet, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(small_unet, path)
    with pytest.raises(CheckpointError, match=r"model.pth: contains pickled Python objects.*state_dict"):
        load_generator(path)


# Seeds of np.random.default_rng(seed).bytes(2000) whose torch.load fails in each of the ways seen with torch 2.13
# (UnpicklingError is the common case; the others escaped the loader before issue 13).
@pytest.mark.parametrize(("seed", "raised"), [
    (0, "unreadable pickle: Unsupported operand 95"), (17, "IndexError"), (62, "KeyError"), (54, "UnicodeDecodeError"),
])
def test_random_bytes_are_refused(tmp_path, seed, raised):
    path = tmp_path / "noise.pth"
    path.write_bytes(np.random.default_rng(seed).bytes(2000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "Detected pickle protocol ..." warning must not reach the user
        with pytest.raises(CheckpointError, match="noise.pth: not a") as err:
            load_generator(path)
    message = str(err.value)
    assert raised in message and "\n" not in message
    assert "weights_only" not in message  # never pass on torch's advice to unpickle untrusted files


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_file_is_refused(small_unet, tmp_path, legacy):
    full = tmp_path / "full.pth"
    torch.save(small_unet.state_dict(), full, _use_new_zipfile_serialization=not legacy)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pth"):
        load_generator(cut)


def test_other_architecture_is_refused_with_key_summary(tmp_path):
    path = tmp_path / "latest_net_D.pth"
    torch.save(PatchGAN().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"unknown architecture \(keys: model\.0\.weight"):
        load_generator(path)


def test_incomplete_state_dict_names_missing_and_wrong_keys(small_unet, tmp_path):
    state = small_unet.state_dict()
    state.pop("model.model.3.weight")
    state["model.model.3.bias"] = torch.zeros(5)
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_generator(path)
    msg = str(err.value)
    assert "broken.pth" in msg and "1 missing (model.model.3.weight)" in msg
    assert "1 unexpected (extra.weight)" in msg and "wrong shape (model.model.3.bias" in msg


def test_missing_file_and_directory_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_generator(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_generator(tmp_path)


def test_newer_own_format_is_refused(small_unet, tmp_path):
    path = tmp_path / "future.pt"
    save_generator(path, small_unet, GeneratorMeta("unet256", 8, "instance"))
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="newer than this tool supports"):
        load_generator(path)


def test_checkpoints_without_colour_roles_load_and_malformed_roles_are_refused(small_unet, tmp_path):
    path = tmp_path / "generator.pt"
    save_generator(path, small_unet, GeneratorMeta("unet256", 8, "instance", bands=(1, 2, 3)))
    payload = torch.load(path, weights_only=True)
    del payload["metadata"]["band_roles"]  # written before colour roles existed
    torch.save(payload, path)
    assert load_generator(path).meta.band_roles is None
    payload["metadata"]["band_roles"] = "red"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="band_roles 'red' is not a list of colour names"):
        load_generator(path)


def test_save_generator_strips_wrapper_prefixes(small_unet, tmp_path):
    compiled_like = torch.nn.Module()
    compiled_like._orig_mod = small_unet  # what torch.compile's wrapper looks like in a state_dict
    path = tmp_path / "g.pt"
    save_generator(path, compiled_like, GeneratorMeta("unet256", 8, "instance"))
    assert all(not k.startswith("_orig_mod.") for k in torch.load(path, weights_only=True)["state_dict"])
    _assert_same_outputs(load_generator(path), small_unet, "instance")
