"""Feature networks for FID / sFID / IS / precision-recall, written for offline use.

The FID network is the TF "inception-2015-12-05" graph as ported to PyTorch by pytorch-fid
(`pt_inception-2015-12-05-6726825d.pth`; torch-fidelity's `weights-inception-...` file has the same keys).
Weights are only ever read from a local file: nothing here touches the network.
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

INCEPTION_FILE_NAMES = (
    "pt_inception-2015-12-05-6726825d.pth",  # pytorch-fid
    "weights-inception-2015-12-05-6726825d.pth",  # torch-fidelity
)
INCEPTION_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                 "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_ENV = "GD_INCEPTION_WEIGHTS"
FEATURE_NET_NAMES = ("inception", "tiny-random")
_TF_SUFFIXES = (".pb", ".pbtxt", ".tgz", ".tar.gz", ".tar")


def tf1_bilinear_resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize float NCHW images like TF1's legacy ResizeBilinear (align_corners=False, no half-pixel shift).

    This is what ADM's evaluator, TTUR and NVIDIA's TorchScript Inception apply before the network, so it is
    the default for parity with published numbers; torch's bilinear interpolation shifts by half a pixel.
    """
    if not torch.is_tensor(x) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError("tf1_bilinear_resize expects a floating-point NCHW tensor, got "
                         f"{type(x).__name__} {getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}")
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if out_h < 1 or out_w < 1:
        raise ValueError(f"resize target must be positive, got {(out_h, out_w)}")
    in_h, in_w = x.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        return x.clone()  # the formula is an exact identity here; skip the gathers
    y_lo, y_hi, y_w = _tf1_axis(in_h, out_h, x.device)
    x_lo, x_hi, x_w = _tf1_axis(in_w, out_w, x.device)
    # TF interpolates along width first, then height, each as a + (b - a) * w; same order, same rounding.
    left, right = x.index_select(3, x_lo), x.index_select(3, x_hi)
    rows = left + (right - left) * x_w.to(x.dtype)
    top, bottom = rows.index_select(2, y_lo), rows.index_select(2, y_hi)
    return top + (bottom - top) * y_w.to(x.dtype)[:, None]


def _tf1_axis(in_size: int, out_size: int, device: torch.device):
    # TF computes the scale and the source coordinate in float32, so do the same to match rounding.
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    src = torch.arange(out_size, dtype=torch.float32) * scale
    lo = src.floor().clamp(max=in_size - 1)
    weight = src - lo
    lo = lo.long()
    hi = (lo + 1).clamp(max=in_size - 1)
    return lo.to(device), hi.to(device), weight.to(device)


# The FID Inception uses torchvision's Inception3 module names, so the published state_dict loads as is.
class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size, stride: int = 1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TF's average pool divides by the number of real (unpadded) pixels: count_include_pad=False.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception (1008 classes, no aux head) with the TF graph's pooling quirks.

    Input: normalised (x - 128) / 128 images of 299x299. `forward` returns pool3 (N, 2048).
    The last block (Mixed_7c) max-pools in its pool branch, as the TF graph does; changing any of the
    pooling patches silently changes FID, so they are fixed here rather than configurable.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, "Mixed_" + name)(x)
        return x.mean(dim=(2, 3))

    def unbiased_logits(self, pool: torch.Tensor) -> torch.Tensor:
        """IS logits: the TF graph's softmax/logits MatMul only, without the bias add."""
        return pool @ self.fc.weight.T


class FeatureNet(nn.Module, abc.ABC):
    """Base class: uint8 (or 0..255 float) NCHW images in, float32 {"pool", "spatial", "logits"} out.

    "spatial" is flattened in NHWC order because that is how ADM's reference mu_s / sigma_s were made.
    Subclasses implement `_features(x)` on float32 3-channel 0..255 images already on the module's device.
    """

    name: str = "feature-net"
    pool_dim: int = 0
    spatial_dim: int = 0
    num_logits: int = 0
    resize_mode: str = "none"
    weights_sha256: str | None = None

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return torch.device("cpu")

    def identity(self) -> dict:
        """What a cache of features must match to be reused with this network."""
        return {"name": self.name, "weights_sha256": self.weights_sha256, "resize_mode": self.resize_mode,
                "pool_dim": self.pool_dim, "spatial_dim": self.spatial_dim, "num_logits": self.num_logits}

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Validate and convert images to float32 (N, 3, H, W) in 0..255 on the module's device."""
        if not torch.is_tensor(images):
            raise ValueError(f"{self.name}: expected a torch.Tensor of images, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(f"{self.name}: expected 4-D NCHW images, got shape {tuple(images.shape)}")
        if images.shape[1] not in (1, 3):
            hint = ""
            if images.shape[-1] in (1, 3):
                hint = " (this looks like NHWC; use images.permute(0, 3, 1, 2))"
            raise ValueError(f"{self.name}: expected 1 or 3 channels in dim 1 of NCHW images, got shape "
                             f"{tuple(images.shape)}{hint}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"{self.name}: images must be uint8 or float in [0, 255], "
                             f"got dtype {images.dtype}")
        x = images.to(self.device)
        if x.is_floating_point() and x.numel():
            lo, hi = float(x.min()), float(x.max())
            if not (0.0 <= lo and hi <= 255.0):  # also rejects NaN
                raise ValueError(f"{self.name}: float images must lie in [0, 255], got range [{lo}, {hi}]; "
                                 "map [-1, 1] data with (x + 1) * 127.5 first")
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.prepare(images)
        n = x.shape[0]
        if n == 0:
            return {"pool": x.new_zeros(0, self.pool_dim), "spatial": x.new_zeros(0, self.spatial_dim),
                    "logits": x.new_zeros(0, self.num_logits)}
        with torch.no_grad():
            out = self._features(x)
        expected = {"pool": self.pool_dim, "spatial": self.spatial_dim, "logits": self.num_logits}
        for key, dim in expected.items():
            if tuple(out[key].shape) != (n, dim):
                raise RuntimeError(f"{self.name}: {key} has shape {tuple(out[key].shape)}, "
                                   f"expected {(n, dim)}")
        return {key: out[key].float() for key in expected}

    @abc.abstractmethod
    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ...


class InceptionFeatures(FeatureNet):
    """ADM-style features from the FID Inception: TF1 resize to 299, (x - 128) / 128, then
    pool3 (FID), Mixed_6d.branch1x1[:, :7] in NHWC order (sFID, TF `mixed_6/conv`), bias-free logits (IS)."""

    pool_dim = 2048
    spatial_dim = 17 * 17 * 7
    num_logits = 1008
    resize_mode = "tf1_bilinear"

    def __init__(self, net: FIDInceptionV3 | None = None, weights_sha256: str | None = None,
                 name: str = "inception") -> None:
        super().__init__()
        self.net = net if net is not None else FIDInceptionV3()
        self.weights_sha256 = weights_sha256
        self.name = name

    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (tf1_bilinear_resize(x, 299) - 128.0) / 128.0
        grabbed: list[torch.Tensor] = []
        # A per-call hook keeps no state on the module and cannot leak between calls.
        handle = self.net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: grabbed.append(o))
        try:
            pool = self.net(x)
        finally:
            handle.remove()
        spatial = grabbed[0][:, :7].permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return {"pool": pool, "spatial": spatial, "logits": self.net.unbiased_logits(pool)}


class TinyFeatureNet(FeatureNet):
    """A small seeded random conv net ("tiny-random") for tests and CPU speed runs; no resize, any H, W >= 8.

    Weights come from torch.Generator().manual_seed(seed) only, so two constructions with the same seed are
    identical on every machine and the global RNG is left untouched.
    """

    pool_dim = 64
    spatial_dim = 7 * 7 * 2
    num_logits = 10
    resize_mode = "none"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)
        self.name = "tiny-random"
        with torch.device("meta"):  # skip the default init, which would consume the global RNG
            self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
            self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
            self.spatial_head = nn.Conv2d(16, 2, 1)
            self.fc = nn.Linear(64, 10, bias=False)
        self.to_empty(device="cpu")
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for pname, p in self.named_parameters():
                if pname.endswith("bias"):
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
                else:
                    fan_in = p[0].numel()
                    p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)

    def identity(self) -> dict:
        return {**super().identity(), "seed": self.seed}

    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = F.relu(self.conv1((x - 128.0) / 128.0))
        spatial = F.adaptive_avg_pool2d(self.spatial_head(h), 7).permute(0, 2, 3, 1).flatten(1)
        pool = F.relu(self.conv3(F.relu(self.conv2(h)))).mean(dim=(2, 3))
        return {"pool": pool, "spatial": spatial, "logits": self.fc(pool)}


def _missing_weights_message(detail: str) -> str:
    return (f"FID Inception weights not found ({detail}). Supply the pytorch-fid file "
            f"{INCEPTION_FILE_NAMES[0]} (GitHub release: {INCEPTION_URL}) or torch-fidelity's "
            f"{INCEPTION_FILE_NAMES[1]}; nothing is downloaded. Pass --inception_weights PATH or set the "
            f"environment variable {WEIGHTS_ENV}=PATH.")


def find_inception_weights(weights: str | os.PathLike | None = None) -> Path:
    """The weight file to use: the argument, else $GD_INCEPTION_WEIGHTS, else the torch hub cache files."""
    for source, value in (("argument", weights), (WEIGHTS_ENV, os.environ.get(WEIGHTS_ENV))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise FileNotFoundError(_missing_weights_message(f"{source} points to missing {path}"))
            return path
    # torch.hub.get_dir() honours $TORCH_HOME (default ~/.cache/torch), where pytorch-fid caches its file.
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    candidates = [folder / fname for fname in INCEPTION_FILE_NAMES]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(_missing_weights_message("looked in " + ", ".join(str(p) for p in candidates)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_state_dict(path: Path, net: nn.Module) -> dict[str, torch.Tensor]:
    lower = path.name.lower()
    if lower.endswith(_TF_SUFFIXES):
        raise ValueError(f"{path}: TensorFlow graphs (classify_image_graph_def.pb, *.tgz) "
                         f"are not read; use pytorch-fid's PyTorch port {INCEPTION_FILE_NAMES[0]} "
                         f"({INCEPTION_URL})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # TorchScript archives, pickles of modules, corrupt files
        raise ValueError(f"{path} is not a plain PyTorch state_dict ({type(exc).__name__}: {exc}); expected "
                         f"{INCEPTION_FILE_NAMES[0]} or {INCEPTION_FILE_NAMES[1]}") from exc
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path} is not a state_dict of tensors (got {type(state).__name__}); expected "
                         f"{INCEPTION_FILE_NAMES[0]} or {INCEPTION_FILE_NAMES[1]}")
    fc = state.get("fc.weight")
    if any(k.startswith("AuxLogits.") for k in state) or (fc is not None and fc.shape[0] == 1000):
        raise ValueError(f"{path} holds torchvision's ImageNet Inception-v3 classifier (1000 classes, "
                         f"AuxLogits), not the FID network (TF inception-2015-12-05, 1008 classes); "
                         f"FID from it is not comparable. Use {INCEPTION_FILE_NAMES[0]} ({INCEPTION_URL})")
    # Older files may lack BatchNorm's num_batches_tracked counters, which do not affect eval outputs.
    want = net.state_dict()
    ignorable = {k for k in want if k.endswith("num_batches_tracked")}
    missing = sorted(set(want) - set(state) - ignorable)
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:
        raise ValueError(f"{path}: keys do not match the FID Inception layout; missing {missing[:5]} "
                         f"({len(missing)} in all), unexpected {unexpected[:5]} ({len(unexpected)} in all)")
    bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(want[k].shape)}"
           for k in want if k in state and state[k].shape != want[k].shape]
    if bad:
        raise ValueError(f"{path}: tensor shapes do not match the FID Inception layout: {bad[:5]}")
    full = dict(state)
    for k in ignorable:
        full.setdefault(k, torch.zeros((), dtype=torch.long))
    return full


def load_feature_net(name: str = "inception", weights: str | os.PathLike | None = None,
                     device: torch.device | str | None = None) -> FeatureNet:
    """Build a feature network by name, in eval mode and float32 on `device` (default CPU).

    "inception": the FID Inception from a local weight file (see `find_inception_weights`); never downloads.
    "tiny-random": TinyFeatureNet with seed int(weights or 0).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if name == "inception":
        path = find_inception_weights(weights)
        with torch.device("meta"):  # no init work and no global RNG use; every tensor comes from the file
            net = FIDInceptionV3()
        state = _read_state_dict(path, net)
        net.to_empty(device="cpu")
        net.load_state_dict(state, strict=True)
        model: FeatureNet = InceptionFeatures(net, weights_sha256=_sha256(path))
    elif name == "tiny-random":
        try:
            seed = int(weights or 0)
        except (TypeError, ValueError):
            raise ValueError(f"tiny-random takes an integer seed as weights, got {weights!r}") from None
        model = TinyFeatureNet(seed=seed)
    else:
        raise ValueError(f"unknown feature network {name!r}; choose one of {', '.join(FEATURE_NET_NAMES)}")
    if device.type == "cuda":
        # TF32 matmuls/convolutions on Ampere+ perturb features enough to move FID; stay in IEEE fp32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model = model.to(device=device, dtype=torch.float32).eval()
    model.requires_grad_(False)
    return model
