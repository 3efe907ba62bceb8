"""ADM UNet and classifier behaviour beyond the fixtures: attention maths, fp16 scope, errors, pools."""

from __future__ import annotations

import math

import pytest
import torch

from guided_diffusion.models.unet import EncoderUNetModel, SuperResModel, UNetModel
from guided_diffusion.models.unet_blocks import qkv_attention
from guided_diffusion.nn import timestep_embedding

TINY = dict(image_size=16, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
            attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=16,
            use_scale_shift_norm=True)


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Re-draw every parameter (zero-initialised output convs would hide wiring errors)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def _reference_attention(qkv: torch.Tensor, heads: int, legacy: bool) -> torch.Tensor:
    """The attention written out with einsum: q, k scaled by ch^-1/4 each, softmax in float32."""
    b, width, length = qkv.shape
    ch = width // (3 * heads)
    if legacy:
        q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = (part.reshape(b * heads, ch, length) for part in qkv.chunk(3, dim=1))
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale).float().softmax(dim=-1).type(qkv.dtype)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, length)


@pytest.mark.parametrize("legacy", [True, False])
def test_sdpa_attention_matches_written_out_attention(legacy):
    qkv = torch.randn(2, 3 * 4 * 8, 10)
    ours = qkv_attention(qkv, num_heads=4, legacy_order=legacy)
    assert (ours - _reference_attention(qkv, 4, legacy)).abs().max().item() < 1e-5
    other = qkv_attention(qkv, num_heads=4, legacy_order=not legacy)
    assert (ours - other).abs().max().item() > 1e-2  # the two layouts are different functions


def test_timestep_embedding_is_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0.0, 3.0]), 6)
    freqs = torch.exp(-math.log(10000) * torch.arange(3) / 3)
    expected = torch.cat([torch.cos(3.0 * freqs), torch.sin(3.0 * freqs)])
    assert torch.allclose(emb[1], expected, atol=1e-6)
    assert torch.allclose(emb[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))
    assert timestep_embedding(torch.tensor([1.0]), 7).shape == (1, 7)


def test_batch_equals_single():
    model = _randomise(UNetModel(**TINY, num_classes=5))
    x, t, y = torch.randn(3, 3, 16, 16), torch.tensor([1, 500, 999]), torch.tensor([0, 4, 2])
    with torch.no_grad():
        batch = model(x, t, y)
        single = torch.cat([model(x[i:i + 1], t[i:i + 1], y[i:i + 1]) for i in range(3)])
    assert (batch - single).abs().max().item() < 1e-4


def test_use_checkpoint_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = _randomise(UNetModel(**TINY))
    ckpt = UNetModel(**dict(TINY, use_checkpoint=True))
    ckpt.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        model(x, t).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert (grads[0] - grads[1]).abs().max().item() < 1e-5


def test_frozen_classifier_still_gives_input_gradients():
    classifier = _randomise(EncoderUNetModel(**TINY, pool="attention"))
    classifier.requires_grad_(False)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    logits = classifier(x, torch.tensor([10, 20]))
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), x)
    assert grad.abs().sum() > 0


def test_fp16_converts_only_torso_convolutions():
    model = UNetModel(**TINY, num_classes=5)
    model.convert_to_fp16()
    assert model.dtype == torch.float16
    torso_convs = {
        name for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d)) and name.split(".")[0] != "out"
    }
    assert torso_convs
    for name, p in model.named_parameters():
        expected = torch.float16 if name.rsplit(".", 1)[0] in torso_convs else torch.float32
        assert p.dtype == expected, name  # Linear, GroupNorm, label_emb and the head stay float32
    model.convert_to_fp32()
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_fp16_forward_is_close_to_fp32():
    model = _randomise(UNetModel(**TINY))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 600])
    with torch.no_grad():
        ref = model(x, t)
        model.convert_to_fp16()
        try:
            half = model(x, t)
        except RuntimeError as err:  # some CPU builds lack fp16 kernels
            pytest.skip(f"fp16 convolution unavailable on this CPU build: {err}")
    assert half.dtype == torch.float32  # the head runs in float32 again
    assert (half - ref).abs().max().item() < 5e-2 * ref.abs().max().item()


def test_input_errors_are_clear():
    model = UNetModel(**TINY, num_classes=5)
    with pytest.raises(ValueError, match="class-conditional"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="multiple of 2"):
        model(torch.randn(1, 3, 15, 15), torch.tensor([1]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\(N, 3"):
        model(torch.randn(1, 4, 16, 16), torch.tensor([1]), torch.tensor([0]))
    unconditional = UNetModel(**TINY)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(torch.randn(1, 3, 16, 16), torch.tensor([1]), torch.tensor([0]))
    classifier = EncoderUNetModel(**TINY, pool="attention")
    with pytest.raises(ValueError, match="image_size"):
        classifier(torch.randn(1, 3, 32, 32), torch.tensor([1]))
    with pytest.raises(ValueError, match="unknown pool"):
        EncoderUNetModel(**TINY, pool="max")


@pytest.mark.parametrize("pool", EncoderUNetModel.POOLS)
def test_classifier_pools(pool):
    classifier = _randomise(EncoderUNetModel(**dict(TINY, out_channels=7), pool=pool))
    logits = classifier(torch.randn(2, 3, 16, 16), torch.tensor([0, 999]))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_super_res_model_conditions_on_low_res():
    model = _randomise(SuperResModel(**TINY))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([100])
    low_a, low_b = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        out_a, out_b = model(x, t, low_res=low_a), model(x, t, low_res=low_b)
    assert out_a.shape == (1, 3, 16, 16)
    assert (out_a - out_b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="low_res"):
        model(x, t)
