import json
from pathlib import Path

import pytest
import torch

from geo_sat2map.models import PatchGAN, Pix2PixUnet, SeedUnet, prepare_for_inference

DATA = Path(__file__).parent / "data"


def _reference_layout(name: str, width: int, ref_width: int = 64) -> list[tuple[str, list[int]]]:
    """The reference key/shape list (ngf=64) scaled to ``width``: channel sizes are multiples of the width."""
    out = []
    for entry in json.loads((DATA / name).read_text())["keys"]:
        shape = [s * width // ref_width if s % ref_width == 0 else s for s in entry["shape"]]
        out.append((entry["key"], shape))
    return out


def _layout(net: torch.nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in net.state_dict().items()]


@pytest.mark.parametrize("width", [64, 8])
def test_unet256_matches_public_pix2pix_layout(width):
    assert _layout(Pix2PixUnet(ngf=width)) == _reference_layout("pix2pix-unet256-state-dict.json", width)


@pytest.mark.parametrize("width", [64, 8])
def test_seed_unet_matches_seed_layout(width):
    assert _layout(SeedUnet(features=width)) == _reference_layout("seed-generator-state-dict.json", width)


def test_patchgan_matches_public_layout_and_gives_30x30_logits():
    net = PatchGAN()
    assert _layout(net) == _reference_layout("pix2pix-patchgan-state-dict.json", 64)
    a, b = torch.randn(2, 1, 3, 256, 256)
    assert net(a, b).shape == (1, 1, 30, 30)


@pytest.mark.parametrize("family", ["small_unet", "small_seed"])
def test_generators_map_256_tiles_to_256_tiles_in_range(family, request):
    net = request.getfixturevalue(family)
    out = prepare_for_inference(net, "instance")(torch.randn(1, 3, 256, 256))
    assert out.shape == (1, 3, 256, 256)
    assert out.abs().max() <= 1


def test_unet_skip_carries_activated_input_like_public_code(small_unet):
    """Public pix2pix applies LeakyReLU in place before concatenating the skip; the skip is activated."""
    block = small_unet.model.model[1]  # first non-outermost block
    x = torch.randn(1, 8, 128, 128)
    block.eval()
    out = block(x)
    assert torch.equal(out[:, :8], torch.nn.functional.leaky_relu(x, 0.2))


@pytest.mark.parametrize("family", ["small_unet", "small_seed"])
@pytest.mark.parametrize("mode", ["instance", "running"])
def test_output_of_a_tile_does_not_depend_on_its_batch(family, mode, request):
    gen = prepare_for_inference(request.getfixturevalue(family), mode)
    torch.manual_seed(5)
    tiles = torch.randn(2, 3, 256, 256)
    tiles[1] = tiles[1] * 3 + 1  # very different statistics from tile 0
    together = gen(tiles)
    alone = torch.cat([gen(tiles[:1]), gen(tiles[1:])])
    assert torch.equal(together, alone)


def test_instance_mode_uses_per_tile_statistics_and_running_mode_does_not(small_unet):
    x = torch.randn(1, 3, 256, 256)
    inst = prepare_for_inference(small_unet, "instance")
    run = prepare_for_inference(small_unet, "running")
    # instance norm makes the output invariant to a global affine change of a BN input; running stats do not
    assert not torch.allclose(inst(x), run(x))
    # the trained module is untouched (still train-mode BatchNorm, same class)
    assert small_unet.training
    assert type(small_unet.model.model[1].model[2]) is torch.nn.BatchNorm2d


def test_instance_mode_equals_train_mode_batchnorm_at_batch_size_1(small_unet):
    """What the public pix2pix test script does: train-mode BN, batch of one, minus dropout."""
    import copy

    reference = copy.deepcopy(small_unet).train()
    for m in reference.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        expected = reference(x)
    assert torch.allclose(prepare_for_inference(small_unet, "instance")(x), expected, atol=1e-5)


def test_dropout_off_by_default_and_on_when_asked(small_unet):
    x = torch.randn(1, 3, 256, 256)
    off = prepare_for_inference(small_unet, "instance")
    assert torch.equal(off(x), off(x))
    on = prepare_for_inference(small_unet, "instance", dropout=True)
    assert not torch.equal(on(x), on(x))


@pytest.mark.parametrize("family", ["small_unet", "small_seed"])
def test_per_tile_norm_equals_instance_norm_and_keeps_channels_last(family, request):
    """Every per-tile norm layer of a channels_last generator gives F.instance_norm's values (within 1e-5) and
    keeps the layout: F.instance_norm makes its input contiguous, undoing channels_last at every norm layer."""
    gen = prepare_for_inference(request.getfixturevalue(family), "instance").to(memory_format=torch.channels_last)
    checked = []

    def check(layer, inputs, output):
        (x,) = inputs
        expected = torch.nn.functional.instance_norm(x, weight=layer.weight, bias=layer.bias, eps=layer.eps)
        assert torch.allclose(output, expected, rtol=0, atol=1e-5)
        assert output.is_contiguous(memory_format=torch.channels_last) and output.dtype == x.dtype
        checked.append(x.shape[-1])

    for layer in gen.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.register_forward_hook(check)
    torch.manual_seed(6)
    x = (torch.randn(2, 3, 256, 256) * 2 + 0.5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = gen(x)
    assert len(checked) >= 12 and min(checked) < 8 < max(checked)  # every depth, down to the innermost
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_per_tile_norm_of_bf16_activations_matches_float32_instance_norm():
    """bf16 activations are normalised with float32 statistics: F.instance_norm of the same values up to the
    rounding of the bf16 output, also where a channel's mean is 40 deviations from zero."""
    from geo_sat2map.models.inference import per_tile_norm

    torch.manual_seed(7)
    for spread, norm in ((20.0, per_tile_norm), (2.0, per_tile_norm)):
        x = (torch.randn(2, 16, 32, 32) * 0.5 + torch.linspace(-spread, spread, 16)[None, :, None, None])
        x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        weight, bias = torch.rand(16) + 0.5, torch.randn(16)
        got = norm(x, weight, bias, 1e-5)
        expected = torch.nn.functional.instance_norm(x.float(), weight=weight, bias=bias, eps=1e-5)
        assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
        # bf16 keeps 8 significant bits: the output's own rounding is at most 2^-8 of its magnitude
        assert torch.all((got.float() - expected).abs() <= expected.abs() * 2**-8 + 1e-3), norm.__name__
    # one-pixel planes (the CPU's fast statistics need two): the plane is its mean, so the output is the bias
    x = torch.randn(2, 16, 1, 1).to(torch.bfloat16)
    bias = torch.randn(16)
    got = per_tile_norm(x, torch.rand(16) + 0.5, bias, 1e-5).float().reshape(2, 16)
    assert torch.all((got - bias).abs() <= bias.abs() * 2**-8 + 1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_tile_norm_does_not_depend_on_the_batch_or_the_thread_count(dtype):
    """A tile's normalised values are the same bits whatever shares its batch and however many threads run: batch
    sizes, bbox subsets and torchrun splits (processes of one thread) must not change a map."""
    from geo_sat2map.models.inference import per_tile_norm

    torch.manual_seed(8)
    x = (torch.randn(4, 64, 64, 64) * 3 + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.rand(64) + 0.5, torch.randn(64)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):  # 3: planes that do not split evenly
            torch.set_num_threads(count)
            results.append(per_tile_norm(x, weight, bias, 1e-5))
        alone = torch.cat([per_tile_norm(x[i:i + 1], weight, bias, 1e-5) for i in range(4)])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], other) for other in (*results[1:], alone))


@pytest.mark.parametrize("family", ["small_unet", "small_seed"])
def test_packed_cpu_convolutions_give_the_same_bf16_generator_bit_for_bit(family, request):
    """oneDNN weights reordered once (translate's CPU low-precision runner) change speed, not one output bit: every
    zero-padded convolution and transposed convolution is packed (the seed-unet's reflect-padded ones are not)."""
    from torch import nn

    from geo_sat2map.models import pack_convolutions_for_cpu, with_low_precision_convolutions

    plain = with_low_precision_convolutions(prepare_for_inference(request.getfixturevalue(family), "instance"),
                                            torch.bfloat16).to(memory_format=torch.channels_last)
    packed = with_low_precision_convolutions(plain, torch.bfloat16)
    convolutions = [m for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    zero_padded = sum(m.padding_mode == "zeros" for m in convolutions)
    rng = torch.get_rng_state()
    count = pack_convolutions_for_cpu(packed)
    if count == 0:
        pytest.skip("oneDNN does not run bf16 convolutions on this CPU: nothing is packed")
    assert count == zero_padded
    assert torch.equal(torch.get_rng_state(), rng)  # its self-check leaves the global stream (test-time dropout) alone
    assert [m.padding_mode for m in packed.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))] == [
        "reflect"] * (len(convolutions) - zero_padded)
    torch.manual_seed(2)
    x = (torch.rand(3, 3, 256, 256) * 2 - 1).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.equal(packed(x), plain(x))
