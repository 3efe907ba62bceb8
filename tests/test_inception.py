"""The FID Inception port, the TF1 resize, the feature-net interface and the weight loader.

No real weights are needed: the network is checked against pytorch-fid's blocks with random weights in the
published layout, which pins the architecture (pooling patches, block wiring) independently of the weights.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from guided_diffusion.metrics import FIDInceptionV3
from guided_diffusion.metrics import InceptionFeatures
from guided_diffusion.metrics import TinyFeatureNet
from guided_diffusion.metrics import load_feature_net
from guided_diffusion.metrics import tf1_bilinear_resize

PT_NAME = "pt_inception-2015-12-05-6726825d.pth"
FIDELITY_NAME = "weights-inception-2015-12-05-6726825d.pth"
ENV = "GD_INCEPTION_WEIGHTS"


pytestmark = pytest.mark.usefixtures("one_thread")


def _random_fid_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the real layout, scaled so activations neither vanish nor explode over 94 layers."""
    state = FIDInceptionV3().state_dict()
    gen = torch.Generator().manual_seed(seed)

    def draw(shape, scale, shift=0.0):
        return shift + scale * torch.randn(shape, generator=gen)

    for key, value in state.items():
        if key.endswith("conv.weight"):
            value.copy_(draw(value.shape, (2.0 / value[0].numel()) ** 0.5))
        elif key.endswith("bn.weight"):
            value.copy_(draw(value.shape, 0.1, 1.0))
        elif key.endswith(("bn.bias", "running_mean")):
            value.copy_(draw(value.shape, 0.1))
        elif key.endswith("running_var"):
            value.copy_(draw(value.shape, 0.1, 1.0).abs() + 0.1)
        elif key.startswith("fc."):
            value.copy_(draw(value.shape, 0.05))
    return state


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A pytorch-fid-named file inside a TORCH_HOME-style cache folder."""
    home = tmp_path_factory.mktemp("torch_home")
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    path = folder / PT_NAME
    torch.save(_random_fid_state(), path)
    return path


# ------------------------------------------------------------------------------------------ resize

def test_tf1_resize_closed_forms():
    ramp4 = torch.arange(4.0).view(1, 1, 1, 4)
    up = tf1_bilinear_resize(ramp4, (1, 8))
    # src = j * 0.5 with the last sample clamped to the edge (no half-pixel shift)
    assert up.flatten().tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]
    ramp8 = torch.arange(8.0).view(1, 1, 1, 8)
    assert tf1_bilinear_resize(ramp8, (1, 4)).flatten().tolist() == [0.0, 2.0, 4.0, 6.0]
    ramp3 = torch.tensor([0.0, 10.0, 20.0]).view(1, 1, 1, 3)
    got = tf1_bilinear_resize(ramp3, (1, 5)).flatten()  # src = 0, 0.6, 1.2, 1.8, 2.4
    assert torch.allclose(got, torch.tensor([0.0, 6.0, 12.0, 18.0, 20.0]), atol=1e-5)
    # A bilinear function of (y, x) is reproduced exactly, separably in both axes.
    img = (10 * torch.arange(4.0).view(4, 1) + torch.arange(8.0).view(1, 8)).view(1, 1, 4, 8)
    out = tf1_bilinear_resize(img, (8, 4))
    rows = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]).view(8, 1)
    assert torch.allclose(out[0, 0], 10 * rows + torch.tensor([0.0, 2.0, 4.0, 6.0]), atol=1e-5)
    # Square sizes as an int; identity when the size is unchanged.
    x = torch.rand(2, 3, 6, 6)
    assert torch.equal(tf1_bilinear_resize(x, 6), x)
    assert tf1_bilinear_resize(x, 299).shape == (2, 3, 299, 299)


def test_tf1_resize_matches_loop_reference():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 5, 7, generator=gen, dtype=torch.float64) * 255
    out_h, out_w = 11, 3
    ref = torch.empty(2, 3, out_h, out_w, dtype=torch.float64)
    for i in range(out_h):
        sy = i * 5 / out_h
        y0 = int(sy)
        y1, wy = min(y0 + 1, 4), sy - y0
        for j in range(out_w):
            sx = j * 7 / out_w
            x0 = int(sx)
            x1, wx = min(x0 + 1, 6), sx - x0
            top = x[..., y0, x0] * (1 - wx) + x[..., y0, x1] * wx
            bottom = x[..., y1, x0] * (1 - wx) + x[..., y1, x1] * wx
            ref[..., i, j] = top * (1 - wy) + bottom * wy
    assert torch.allclose(tf1_bilinear_resize(x, (out_h, out_w)), ref, atol=1e-5)
    if torch.cuda.is_available():
        cpu = tf1_bilinear_resize(x.float(), 299)
        assert torch.allclose(tf1_bilinear_resize(x.float().cuda(), 299).cpu(), cpu, atol=1e-4)
    with pytest.raises(ValueError):
        tf1_bilinear_resize(x.to(torch.uint8), 8)


# ------------------------------------------------------------------------------------------ network

def test_parity_with_pytorch_fid(weights_file, monkeypatch):
    pfi = pytest.importorskip("pytorch_fid.inception")
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    fetched = []

    def fake_fetch(*args, **kwargs):  # stands in for the download; pytorch-fid then loads it strictly
        fetched.append(args)
        return state

    monkeypatch.setattr(pfi, "load_state_dict_from_url", fake_fetch)
    ref = pfi.InceptionV3([3], resize_input=False, normalize_input=False, use_fid_inception=True).eval()
    assert len(fetched) == 1
    ours = load_feature_net("inception", weights_file)
    assert set(ours.net.state_dict()) == set(state)

    grabbed = {}

    def grab(key):
        return lambda module, inputs, output: grabbed.__setitem__(key, output)

    # pytorch-fid's blocks[2][6] is Mixed_6d: its 1x1 branch is the sFID layer, compare it too
    hooks = [ref.blocks[2][6].branch1x1.register_forward_hook(grab("ref")),
             ours.net.Mixed_6d.branch1x1.register_forward_hook(grab("ours"))]
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        want = ref(x)[0].flatten(1)
        got = ours.net(x)
    for h in hooks:
        h.remove()
    assert got.shape == (2, 2048)
    assert want.abs().max() > 0.05 and torch.isfinite(want).all()  # the random net is not degenerate
    assert (got - want).abs().max().item() < 1e-4
    assert (grabbed["ours"] - grabbed["ref"]).abs().max().item() < 1e-4


def test_full_uint8_path_spatial_and_logits(weights_file):
    model = load_feature_net("inception", weights_file)
    assert isinstance(model, InceptionFeatures)
    assert (model.pool_dim, model.spatial_dim, model.num_logits) == (2048, 2023, 1008)
    assert model.resize_mode == "tf1_bilinear" and model.weights_sha256 is not None
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (2, 3, 40, 48), dtype=torch.uint8, generator=gen)
    out = model(images)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"pool": (2, 2048), "spatial": (2, 2023),
                                                           "logits": (2, 1008)}
    assert all(v.dtype == torch.float32 for v in out.values())

    maps = []
    handle = model.net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: maps.append(o))
    with torch.no_grad():
        pool = model.net((tf1_bilinear_resize(images.float(), 299) - 128) / 128)
    handle.remove()
    fmap = maps[0]
    assert fmap.shape == (2, 192, 17, 17)
    assert torch.allclose(out["pool"], pool, atol=1e-6)
    assert torch.allclose(out["spatial"], fmap[:, :7].permute(0, 2, 3, 1).reshape(2, -1), atol=1e-6)
    n, c, h, w = 1, 5, 12, 3  # NHWC flatten: channel varies fastest
    assert torch.allclose(out["spatial"][n, (h * 17 + w) * 7 + c], fmap[n, c, h, w], atol=1e-6)
    weight, bias = model.net.fc.weight, model.net.fc.bias
    assert torch.allclose(out["logits"], out["pool"] @ weight.T, atol=1e-5)
    assert not torch.allclose(out["logits"], out["pool"] @ weight.T + bias, atol=1e-3)


# ------------------------------------------------------------------------------------------ loader

def test_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        load_feature_net("inception")
    for needle in (PT_NAME, FIDELITY_NAME, ENV, "--inception_weights"):
        assert needle in str(err.value)
    with pytest.raises(FileNotFoundError, match=PT_NAME):
        load_feature_net("inception", tmp_path / "nope.pth")
    monkeypatch.setenv(ENV, str(tmp_path / "also_missing.pth"))
    with pytest.raises(FileNotFoundError, match="also_missing"):
        load_feature_net("inception")


def test_rejects_wrong_files(tmp_path):
    tv = tmp_path / "inception_v3_google-0cc3c7bd.pth"
    torch.save({"AuxLogits.fc.weight": torch.zeros(1000, 768), "fc.weight": torch.zeros(1000, 2048)}, tv)
    with pytest.raises(ValueError, match="torchvision"):
        load_feature_net("inception", tv)
    tv1000 = tmp_path / "tv1000.pth"
    torch.save({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}, tv1000)
    with pytest.raises(ValueError, match="torchvision"):
        load_feature_net("inception", tv1000)
    pb = tmp_path / "classify_image_graph_def.pb"
    pb.write_bytes(b"\x08\x01 not a torch file")
    with pytest.raises(ValueError, match="TensorFlow"):
        load_feature_net("inception", pb)
    other = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="keys"):
        load_feature_net("inception", other)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    with pytest.raises(ValueError, match="state_dict"):
        load_feature_net("inception", junk)
    with pytest.raises(ValueError, match="tiny-random"):
        load_feature_net("vgg16")


def test_weight_lookup_env_and_cache(weights_file, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(weights_file))
    model = load_feature_net()
    assert model.weights_sha256 == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    monkeypatch.delenv(ENV)
    monkeypatch.setenv("TORCH_HOME", str(weights_file.parents[2]))
    assert load_feature_net().weights_sha256 == model.weights_sha256
    # torch-fidelity's file name, saved without BatchNorm's num_batches_tracked counters.
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    state = torch.load(weights_file, weights_only=True)
    stripped = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(stripped, folder / FIDELITY_NAME)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    other = load_feature_net()
    assert torch.equal(other.net.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])


# ------------------------------------------------------------------------------------------ interface

def test_bad_inputs_raise():
    net = TinyFeatureNet(0)
    good = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    net(good)
    bad = [good.long(), good.bool(), good[0], good.permute(0, 2, 3, 1), torch.zeros(2, 2, 16, 16),
           good.float() - 1, good.float() + 300, good.numpy()]
    for images in bad:
        with pytest.raises(ValueError):
            net(images)
    with pytest.raises(ValueError, match="NHWC"):
        net(good.permute(0, 2, 3, 1))


def test_tiny_feature_net():
    rng_before = torch.get_rng_state()
    a, b, c = TinyFeatureNet(seed=0), TinyFeatureNet(seed=0), load_feature_net("tiny-random", "1")
    assert torch.equal(torch.get_rng_state(), rng_before)  # construction leaves the global RNG alone
    assert c.seed == 1 and c.identity()["seed"] == 1 and c.weights_sha256 is None
    gen = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=gen)
    oa, ob, oc = a(images), b(images), c(images)
    shapes = {k: tuple(v.shape) for k, v in oa.items()}
    assert shapes == {"pool": (5, 64), "spatial": (5, 98), "logits": (5, 10)}
    for key in oa:
        assert torch.equal(oa[key], ob[key])
        assert not torch.allclose(oa[key], oc[key])
    assert torch.allclose(a(images.float())["pool"], oa["pool"])
    gray = images[:, :1]
    assert torch.allclose(a(gray)["pool"], a(gray.expand(-1, 3, -1, -1).contiguous())["pool"])
    small = a(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    assert small["spatial"].shape == (1, 98)
    assert a(images[:0])["pool"].shape == (0, 64)
