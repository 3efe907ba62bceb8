"""The original v-diffusion UNet (--arch original) against what tqch/v-diffusion-torch's own code recorded in
tests/data/vdpm_original_unet.json: the parameter names and shapes its shipped configs build (2023 and 2024, read
through this package's config reader), its outputs on tiny random weights, and its checkpoint format loading
strictly and sampling through this package's process."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from guided_diffusion.cli import run_cli
from guided_diffusion.diffusion import ContinuousDiffusion
from guided_diffusion.models.checkpoints import CheckpointMismatchError
from guided_diffusion.models.vdpm_unet import VDiffusionUNet, timestep_embedding
from guided_diffusion.vdpm import DEFAULTS_CONFIG, model_from_flags, sample_vdpm
from guided_diffusion.vdpm.original import load_network, read_config, read_weights
from script_runs import import_script

MANIFEST = json.loads((Path(__file__).parent / "data" / "vdpm_original_unet.json").read_text())
pytestmark = pytest.mark.usefixtures("one_thread")


def _keys(model):
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def _digest(keys):
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()


def _weights(keys, seed):
    """The manifest's weight_rule, in the manifest's key order."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in keys:
        w = torch.randn(shape, generator=g)
        if len(shape) >= 2:
            w = w / math.sqrt(math.prod(shape[1:]))
        else:
            w = 1 + 0.1 * w if key.endswith(".weight") else 0.1 * w
        out[key] = w
    return out


def _write_config(tmp_path, name):
    path = tmp_path / (name.replace("/", "_") + ".json")
    path.write_text(json.dumps(MANIFEST["config_files"][name]))
    return path


CONFIG_FILES = {"cifar10_cond": "2024/cifar10_cond", "cifar10_uncond": "2024/cifar10_uncond",
                "celeba": "2024/celeba", "cifar10_2023": "2023/cifar10", "celeba_2023": "2023/celeba"}


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_the_originals_configs_build_its_parameter_names_and_shapes(name, tmp_path):
    """Each shipped config, read as the original's train.py reads it (2024: completed from defaults.json; 2023: its
    'denoise' section, --use-cfg), builds exactly the original's state dict: every key and shape, in order."""
    entry = MANIFEST["configs"][name]
    defaults = _write_config(tmp_path, "2024/defaults")
    flags, _ = read_config(_write_config(tmp_path, CONFIG_FILES[name]), defaults=defaults)
    flags.setdefault("dataset", entry["dataset"])  # the 2023 configs take it from --dataset
    if name.endswith("_2023"):
        flags["use_cfg"] = True
    flags.setdefault("image_size", 0)
    assert flags["arch"] == "original"
    with torch.device("meta"):
        keys = _keys(model_from_flags(flags))
    if "keys" in entry:
        missing = [k for k in entry["keys"] if k not in keys]
        extra = [k for k in keys if k not in entry["keys"]]
        assert not missing and not extra, (missing[:5], extra[:5])
        assert keys == entry["keys"]  # the order too (the weights of a flat list follow it)
    assert len(keys) == entry["num_keys"] and _digest(keys) == entry["keys_sha256"]


def test_the_published_configs_here_build_the_original_layout():
    """configs/vdpm reproduce the original's published configs: the same state dict (celeba: 64-channel attention,
    as defaults.json's num_heads 1 with head_dim 64 makes it)."""
    for ours, theirs in (("cifar10_cond", "cifar10_cond"), ("cifar10_uncond", "cifar10_uncond"),
                         ("celeba", "celeba")):
        flags, _ = read_config(ours, Path(DEFAULTS_CONFIG).parent)
        flags.setdefault("image_size", 0)
        with torch.device("meta"):
            keys = _keys(model_from_flags(flags))
        assert _digest(keys) == MANIFEST["configs"][theirs]["keys_sha256"], ours


@pytest.mark.parametrize("case", sorted(MANIFEST["forward"]))
def test_outputs_match_the_original_on_random_weights(case):
    """Forward pass against the original's code on the same weights: class labels with the null label, multi-tag
    labels with a 48-wide embedding and 16-channel heads, 1 channel without labels, the xFormers layout."""
    spec = MANIFEST["forward"][case]
    model = VDiffusionUNet(**spec["kwargs"]).eval()
    keys = _keys(model)
    assert len(keys) == spec["num_keys"] and _digest(keys) == spec["keys_sha256"]
    model.load_state_dict(_weights(keys, spec["weight_seed"]), strict=True)
    g = torch.Generator().manual_seed(spec["input_seed"])
    r = spec["resolution"]
    x = torch.randn((len(spec["t"]), spec["kwargs"]["in_channels"], r, r), generator=g)
    t = torch.tensor(spec["t"], dtype=torch.float64)
    y = None if spec["y"] is None else torch.tensor(spec["y"])
    with torch.no_grad():
        out = model(x, t, y)
    expected = torch.tensor(spec["out"]).reshape(spec["out_shape"])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-5)


def test_time_embedding_is_the_fairseq_one_of_1000_t():
    t = torch.tensor([0.0, 0.37], dtype=torch.float64)
    emb = timestep_embedding(t, 6)
    freqs = [math.exp(-k * math.log(10000) / 2) for k in range(3)]
    expected = [[math.sin(1000 * v * f) for f in freqs] + [math.cos(1000 * v * f) for f in freqs] for v in (0.0, 0.37)]
    torch.testing.assert_close(emb, torch.tensor(expected, dtype=torch.float32))
    assert timestep_embedding(t, 7).shape == (2, 7) and timestep_embedding(t, 7)[:, -1].abs().max() == 0


TINY_ORIGINAL_CONFIG = {
    "data": {"name": "cifar10"},
    "train": {"epochs": 1, "lr": 2e-4},
    "model": {"hid_channels": 32, "ch_multipliers": [1, 2], "num_res_blocks": 1, "apply_attn": [False, True],
              "drop_rate": 0.0, "num_heads": 2},
    "diffusion": {"logsnr_schedule": "cosine", "train_timesteps": 0, "model_out_type": "v",
                  "model_var_type": "fixed_medium", "intp_frac": 0.3, "reweight_type": "snr_trunc",
                  "loss_type": "mse"},
    "conditional": {"use_cfg": True, "w_guide": 0.1, "p_uncond": 0.1},
    "source": "a tiny config in the original's 2024 format",
}


@pytest.fixture
def original_checkpoint(tmp_path):
    """A checkpoint in the original's format (DDP "module." keys, EMA shadow, AdamW and LambdaLR states) whose
    weights follow the manifest's layout of forward case tiny_classes, and a config of the original's format."""
    spec = MANIFEST["forward"]["tiny_classes"]
    keys = _keys(VDiffusionUNet(**spec["kwargs"]))
    assert _digest(keys) == spec["keys_sha256"]
    model, ema = _weights(keys, 1), _weights(keys, 2)
    params = [torch.nn.Parameter(v.clone()) for v in model.values()]
    opt = torch.optim.AdamW(params, lr=2e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lambda k: min((k + 1) / 10, 1.0))
    ckpt = {"model": {f"module.{k}": v for k, v in model.items()}, "optimizer": opt.state_dict(),
            "ema": {"decay": 0.9999, "shadow": {f"module.{k}": v for k, v in ema.items()}, "num_updates": 7},
            "scheduler": sched.state_dict(), "epoch": 16, "loss": 0.25}
    path = tmp_path / "ckpt_16.pt"
    torch.save(ckpt, path)
    config = tmp_path / "cifar10_tiny.json"
    config.write_text(json.dumps(TINY_ORIGINAL_CONFIG))
    return path, config, model, ema


def test_an_original_checkpoint_loads_strictly_and_samples_through_our_process(original_checkpoint, tmp_path):
    path, config, model_sd, ema_sd = original_checkpoint
    for use_ema, expected in ((False, model_sd), (True, ema_sd)):
        state, kind = read_weights(path, use_ema)
        assert kind == "original" and list(state) == list(expected)
        assert all(torch.equal(state[k], expected[k]) for k in expected)
    flags, _ = read_config(config, defaults=DEFAULTS_CONFIG)
    flags.update(use_cfg=True, image_size=8)
    model = load_network(model_from_flags(flags), read_weights(path, True)[0], flags).eval()
    assert isinstance(model, VDiffusionUNet) and model.num_classes == 10
    diffusion = ContinuousDiffusion(**{k: flags[k] for k in ("logsnr_schedule", "logsnr_min", "logsnr_max",
                                                              "model_out_type", "model_var_type", "intp_frac")},
                                    sample_timesteps=3)
    noise = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 5, 10])
    with torch.no_grad():
        guided = sample_vdpm(diffusion, model, noise, labels, w_guide=1.0, use_ddim=True)
        plain = sample_vdpm(diffusion, model, noise, labels, w_guide=0.0, use_ddim=True)
    assert guided.shape == (4, 3, 8, 8) and torch.isfinite(guided).all()
    assert plain.abs().max() <= 1.0  # the last step returns the clipped x0 (guided: (1 + w) x0_c - w x0_u)
    assert not torch.allclose(guided, plain)  # the labels and the null label reach the model

    # The same through the sampling script, with the original generate.py's flags.
    out = tmp_path / "gen"
    run_cli(import_script("vdpm_generate").main,
            [str(a) for a in ["--config-path", config, "--ckpt-path", path, "--use-ema", "--use-ddim",
                              "--sample-timesteps", 3, "--total-size", 3, "--batch-size", 2, "--data-root",
                              tmp_path, "--save-dir", out, "--no-progress", "--device", "cpu"]])
    samples = np.load(out / "samples_3x32x32x3.npz")
    assert samples["arr_0"].shape == (3, 32, 32, 3) and samples["arr_1"].max() <= 9
    record = json.loads((out / "samples_3x32x32x3_flags.json").read_text())
    assert record["train_flags"]["arch"] == "original" and record["train_flags"]["use_cfg"] is True
    assert record["sample_timesteps"] == 3 and record["w_guide"] == 0.1  # the config's w


def test_a_checkpoint_that_does_not_fit_names_the_flag(original_checkpoint):
    path, config, _, _ = original_checkpoint
    flags, _ = read_config(config, defaults=DEFAULTS_CONFIG)
    flags.update(use_cfg=True, image_size=8)
    state = read_weights(path, False)[0]
    with pytest.raises(CheckpointMismatchError, match="--arch original"):
        load_network(model_from_flags({**flags, "arch": "adm", "num_heads": 1}), state, flags)
    with pytest.raises(CheckpointMismatchError, match="--hid-channels: the checkpoint has 32, the model 64"):
        load_network(model_from_flags({**flags, "hid_channels": 64}), state, flags)
    with pytest.raises(CheckpointMismatchError, match="--use-cfg"):
        load_network(model_from_flags({**flags, "use_cfg": False}), state, flags)


def test_the_originals_unsupported_settings_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="one head"):
        VDiffusionUNet(in_channels=3, hid_channels=32, out_channels=3, ch_multipliers=(1,), num_res_blocks=1,
                       apply_attn=True, num_heads=2, use_xformers=True)
    with pytest.raises(ValueError, match="resample_with_res"):
        VDiffusionUNet(in_channels=3, hid_channels=32, out_channels=3, ch_multipliers=(1,), num_res_blocks=1,
                       apply_attn=False, resample_with_res=False)
    bad = tmp_path / "rescale.json"
    bad.write_text(json.dumps({"diffusion": {"allow_rescale": True}}))
    with pytest.raises(ValueError, match="allow_rescale"):
        read_config(bad, defaults=DEFAULTS_CONFIG)
    bad.write_text(json.dumps({"data": {"name": "cifar10"}, "model": {"in_channels": 1}}))
    with pytest.raises(ValueError, match="in_channels 1 does not fit cifar10"):
        read_config(bad, defaults=DEFAULTS_CONFIG)
