"""Where the off-the-shelf weights come from (``--classifier_init``, the library caches, never random for a
ppap teacher), DeiT weights in timm's own layout, and DeiT experts that load at the original code's strength."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from guided_diffusion import logger
from guided_diffusion.cli import run_cli
from guided_diffusion.ppap import (CheckpointLayoutError, ModelWithResize, build_classifier, describe_layout,
                                   find_library_weights, load_classifier_state_dict, read_state_dict,
                                   resolve_init_weights)
from guided_diffusion.ppap import classifiers as classifiers_module
from guided_diffusion.ppap.guidance import load_guidance_classifier
from guided_diffusion.ppap.training import starting_weights
from script_runs import import_script

classifier_train = import_script("classifier_train")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def empty_caches(tmp_path, monkeypatch):
    """torchvision's and timm's caches point into tmp_path (empty unless a test fills them)."""
    from huggingface_hub import constants
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_hub"))
    before = logger.get_current()
    monkeypatch.setattr(logger, "_current", before)
    yield
    if logger.get_current() is not before:
        logger.get_current().close()


def _pngs(folder, n=8, size=8):
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        Image.fromarray((torch.rand(size, size, 3, generator=gen) * 255).byte().numpy()).save(folder / f"{i:06d}.png")
    return folder


def _train(argv):
    run_cli(classifier_train.main, [str(a) for a in argv])


# ------------------------------------------------------------------------------------------- teacher weights

@pytest.mark.parametrize("name,version", [("ResNet18", "ResNet18_Weights.IMAGENET1K_V1"),
                                          ("ResNet50", "ResNet50_Weights.IMAGENET1K_V2"),
                                          ("ResNet152", "ResNet152_Weights.IMAGENET1K_V2"),
                                          ("DEIT", "deit_small_patch16_224")])
def test_ppap_without_teacher_weights_exits_2_before_writing_anything(tmp_path, capsys, name, version):
    data = _pngs(tmp_path / "gen")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exc:
        _train(["--method", "ppap", "--classifier_name", name, "--data_dir", data, "--image_size", 8,
                "--iterations", 2, "--log_path", tmp_path / "run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for word in ("--classifier_init", version, os.path.join(str(tmp_path / "torch_home"), "hub", "checkpoints")):
        assert word in err, err
    assert not (tmp_path / "run").exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_finetune_and_multi_experts_start_from_random_weights_only_with_a_warning():
    path, source = starting_weights("finetune", "ResNet18", "", 1000)
    assert path is None and source.startswith("RANDOM weights") and "ResNet18_Weights.IMAGENET1K_V1" in source
    assert starting_weights("clean", "ResNet18", "", 10)[0] is None
    with pytest.raises(ValueError, match="--classifier_init"):
        starting_weights("ppap", "ResNet18", "", 1000)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        starting_weights("finetune", "ResNet18", "nowhere.pt", 10)


def test_torchvision_cache_supplies_the_teacher(tmp_path):
    """ResNet18_Weights.IMAGENET1K_V1 in torchvision's cache (its file name) is the teacher of a ppap run, and
    the log says where the weights came from."""
    torch.manual_seed(5)
    cached = build_classifier("ResNet18").state_dict()
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(cached, hub / "resnet18-f37072fd.pth")
    assert find_library_weights("ResNet18") == str(hub / "resnet18-f37072fd.pth")
    assert resolve_init_weights("ResNet18", "", num_classes=10)[0] is None  # 1000 ImageNet classes only
    run = tmp_path / "run"
    _train(["--method", "ppap", "--classifier_name", "ResNet18", "--data_dir", _pngs(tmp_path / "gen"),
            "--image_size", 8, "--iterations", 1, "--n_experts", 1, "--batch_size", 4, "--gamma", 2,
            "--save_interval", 1000, "--progress", False, "--log_path", run])
    expert = read_state_dict(str(run / "0_max1.ckpt"))
    assert torch.equal(expert["resnet.fc.weight"], cached["fc.weight"])  # frozen: the teacher's own
    assert torch.equal(expert["resnet.layer4.1.conv2.conv.weight"], cached["layer4.1.conv2.weight"])
    log = (run / "log.txt").read_text()
    assert "from torchvision ResNet18_Weights.IMAGENET1K_V1 from the local cache" in log


# ----------------------------------------------------------------------------------- DeiT in timm's layout

@pytest.fixture(scope="module")
def deit_timm_state():
    """deit_small_patch16_224's state dict as timm itself gives it (cls_token, blocks.*), seeded."""
    import timm
    torch.manual_seed(11)
    return timm.create_model("deit_small_patch16_224", pretrained=False).state_dict()


def test_deit_in_timm_layout_is_a_deit(tmp_path, deit_timm_state):
    assert "timm's own layout" in describe_layout(deit_timm_state)
    path = tmp_path / "deit_timm.pth"
    torch.save(deit_timm_state, path)
    model = build_classifier("DEIT", init_path=str(path))  # --classifier_init
    assert torch.equal(model.classifier.cls_token, deit_timm_state["cls_token"])
    naive = load_guidance_classifier("naive", [str(path)], classifier_name="DEIT")  # naive --classifier_path
    assert torch.equal(naive.classifier.classifier.blocks[3].attn.qkv.weight,
                       deit_timm_state["blocks.3.attn.qkv.weight"])
    with pytest.raises(CheckpointLayoutError) as exc:
        load_classifier_state_dict(build_classifier("ResNet18"), deit_timm_state)
    assert "it looks like an off-the-shelf DeiT in timm's own layout (keys 'cls_token', 'blocks.*') but the " \
           "model is a finetune/multi_experts ResNet" in str(exc.value)


def test_timm_hub_cache_supplies_the_deit(tmp_path, deit_timm_state):
    """timm >= 0.9 keeps deit_small_patch16_224 (fb_in1k) in the Hugging Face cache as model.safetensors."""
    from safetensors.torch import save_file
    repo = tmp_path / "hf_hub" / "models--timm--deit_small_patch16_224.fb_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in deit_timm_state.items()},
              str(repo / "snapshots" / "0123abcd" / "model.safetensors"))
    path, source = resolve_init_weights("DEIT")
    assert path == str(repo / "snapshots" / "0123abcd" / "model.safetensors") and "deit_small_patch16_224" in source
    model = build_classifier("DEIT", init_path=path)
    assert torch.equal(model.classifier.head.weight, deit_timm_state["head.weight"])


# ---------------------------------------------------------------------- DeiT LoRA strength (scale convention)

def _tiny_vit(num_classes: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(img_size=16, patch_size=8, embed_dim=24, depth=2, num_heads=2,
                             num_classes=num_classes)


class OriginalLoRALinear(nn.Module):
    """riiid/PPAP peft/lora.py LoRALinear, unmerged forward: F.linear(x, W, b) + x @ A^T @ B^T (no alpha/r)."""

    def __init__(self, r: int, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        self.lora_A = nn.Parameter(torch.zeros(r, linear.in_features))
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, r))

    def forward(self, x):
        return F.linear(x, self.linear.weight, bias=self.linear.bias) + x @ self.lora_A.T @ self.lora_B.T


class OriginalDeiTStudent(nn.Module):
    """riiid/PPAP AdapterWrapperDEIT over ModelWithResize: normalize((1 + x) / 2), resize, the adapted ViT."""

    class Resized(nn.Module):
        def __init__(self, vit):
            super().__init__()
            self.classifier = vit

        def forward(self, x):
            return self.classifier(F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False))

    def __init__(self, vit: nn.Module, r: int):
        super().__init__()
        for block in vit.blocks:
            block.attn.qkv = OriginalLoRALinear(r, block.attn.qkv)
            block.attn.proj = OriginalLoRALinear(r, block.attn.proj)
        self.deit = self.Resized(vit)

    def forward(self, x):
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return self.deit(((1 + x) / 2 - mean) / std)


def test_deit_experts_trained_here_give_the_original_codes_logits(tmp_path, monkeypatch):
    """A DeiT PPAP run with the default flags, loaded into PPAP's own LoRALinear (scale 1), gives the logits our
    sampler computes; read at alpha/r (gamma 4, alpha 2: half) they differ, which is what the old default did."""
    monkeypatch.setattr(classifiers_module, "_build_bare",
                        lambda name, num_classes: ModelWithResize(_tiny_vit(num_classes), size=16))
    torch.manual_seed(2)
    teacher = _tiny_vit(10).state_dict()  # timm's own layout, as --classifier_init
    torch.save(teacher, tmp_path / "vit.pth")
    run = tmp_path / "run"
    _train(["--method", "ppap", "--classifier_name", "DEIT", "--classifier_num_classes", 10, "--image_size", 16,
            "--data_dir", _pngs(tmp_path / "gen", size=16), "--classifier_init", tmp_path / "vit.pth",
            "--n_experts", 2, "--iterations", 4, "--batch_size", 4, "--gamma", 4, "--lora_alpha", 2,
            "--lr", 1e-2, "--save_interval", 1000, "--progress", False, "--log_path", run])
    assert json.loads((run / "flags.json").read_text())["lora_scale_convention"] == "released"
    paths = [str(run / f"{i}_max2.ckpt") for i in range(2)]
    expert1 = read_state_dict(paths[1])
    assert expert1["deit.classifier.blocks.0.attn.qkv.lora_B"].abs().sum() > 0

    original = OriginalDeiTStudent(_tiny_vit(10), r=4)
    original.load_state_dict(expert1, strict=True)
    original.eval()
    ours = load_guidance_classifier("ppap", paths, classifier_name="DEIT", num_classes=10, gamma=4, lora_alpha=2)
    bare = tmp_path / "bare"  # without the run's flags.json, which would refuse another convention
    bare.mkdir()
    for p in paths:
        shutil.copy(p, bare)
    half = load_guidance_classifier("ppap", [str(bare / os.path.basename(p)) for p in paths],
                                    classifier_name="DEIT", num_classes=10, gamma=4, lora_alpha=2,
                                    scale_convention="alpha_over_r")
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    t = torch.full((3,), 700)
    with torch.no_grad():
        want = original(x)
        torch.testing.assert_close(ours(x, t), want, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(half(x, t), want, atol=1e-4)
