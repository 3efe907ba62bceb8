"""PPAP foundations: LoRA layers against the golden fixture, released checkpoint layouts, expert routing and
the memory of shared-backbone expert sets."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from guided_diffusion.ppap import (
    CheckpointLayoutError,
    ExpertRanges,
    FullExpertSet,
    LoRAConv2d,
    LoRAExpertSet,
    LoRALinear,
    add_lora,
    build_classifier,
    freeze_for_ppap,
    imagenet_normalize,
    load_classifier_state_dict,
    lora_layers,
    ppap_trainable_names,
    unique_storage_bytes,
)
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.timesteps import NoiseLevel
from tests.conftest import fixtures_dir, load_fixture

NAMES = ("ResNet18", "ResNet50", "ResNet152", "DEIT")


@pytest.fixture(scope="module")
def manifest() -> dict:
    path = fixtures_dir() / "ppap" / "ppap_key_manifest.json"
    if not path.exists():
        pytest.skip(f"golden fixture {path} not found (../shared/fixtures is absent; set GD_FIXTURES)")
    return json.loads(path.read_text())


def _layout(model: nn.Module) -> list:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def _dict_from_manifest(entries: list, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in entries:
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(seed, dtype=torch.long)
        else:
            out[key] = torch.randn(shape, generator=gen)
    return out


# ---------------------------------------------------------------------------------------------- LoRA layers

def _fixture_conv(convention: str):
    spec = load_fixture("ppap/ppap_lora_layers.pt")["conv"]
    conv = nn.Conv2d(spec["in_channels"], spec["out_channels"], spec["kernel_size"], stride=spec["stride"],
                     padding=spec["padding"])
    layer = LoRAConv2d(conv, spec["r"], spec["lora_alpha"], scale_convention=convention)
    layer.load_state_dict(spec["state_dict"], strict=True)
    return layer, spec


def _fixture_linear(convention: str):
    spec = load_fixture("ppap/ppap_lora_layers.pt")["linear"]
    layer = LoRALinear(nn.Linear(spec["in_features"], spec["out_features"]), spec["r"], spec["lora_alpha"],
                       scale_convention=convention)
    layer.load_state_dict(spec["state_dict"], strict=True)
    return layer, spec


@pytest.mark.fixtures
def test_lora_conv_fixture_uses_alpha_over_r():
    layer, spec = _fixture_conv("alpha_over_r")
    assert list(layer.state_dict()) == list(spec["state_dict"])
    assert layer.scale == spec["lora_alpha"] / spec["r"] and layer.scale_convention == "alpha_over_r"
    with torch.no_grad():
        torch.testing.assert_close(layer(spec["x"]), spec["out"], atol=1e-5, rtol=0)
        unit, _ = _fixture_conv("unit")
        assert (unit(spec["x"]) - spec["out"]).abs().max() > 1e-2


@pytest.mark.fixtures
def test_lora_linear_fixture_uses_unit_scale():
    layer, spec = _fixture_linear("unit")
    assert list(layer.state_dict()) == list(spec["state_dict"])
    assert layer.scale == 1.0
    with torch.no_grad():
        torch.testing.assert_close(layer(spec["x"]), spec["out"], atol=1e-5, rtol=0)
        scaled, _ = _fixture_linear("alpha_over_r")
        assert (scaled(spec["x"]) - spec["out"]).abs().max() > 1e-2


def test_lora_defaults_and_init():
    conv = LoRAConv2d(nn.Conv2d(4, 6, 3, padding=1), r=2, lora_alpha=8)
    lin = LoRALinear(nn.Linear(5, 7), r=2, lora_alpha=8)
    assert conv.scale_convention == lin.scale_convention == "alpha_over_r" and conv.scale == lin.scale == 4
    assert tuple(conv.lora_A.shape) == (6, 12) and tuple(conv.lora_B.shape) == (18, 6)
    assert conv.lora_B.abs().sum() == 0 and conv.lora_A.abs().sum() > 0
    assert LoRALinear(nn.Linear(5, 7), 2, 8, scale=0.3).scale == pytest.approx(0.3)
    with pytest.raises(ValueError, match="groups=1"):
        LoRAConv2d(nn.Conv2d(4, 4, 3, groups=2), r=2, lora_alpha=8)
    with pytest.raises(ValueError, match="scale convention"):
        LoRALinear(nn.Linear(5, 7), 2, 8, scale_convention="alpha")


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_merge_unmerge_same_output_and_exact_weights(kind):
    if kind == "conv":
        layer, x = LoRAConv2d(nn.Conv2d(4, 6, 3, stride=2, padding=1), 2, 8), torch.randn(2, 4, 9, 9)
        base = layer.conv
    else:
        layer, x = LoRALinear(nn.Linear(5, 7), 2, 8, scale_convention="unit"), torch.randn(3, 5)
        base = layer.linear
    nn.init.normal_(layer.lora_B)
    original = base.weight.detach().clone()
    keys = list(layer.state_dict())
    with torch.no_grad():
        unmerged = layer(x)
        layer.merge()
        layer.merge()  # idempotent
        assert layer.merged and not torch.equal(base.weight, original)
        torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=0)
        saved = layer.state_dict()
        assert list(saved) == keys
        assert torch.equal(saved[f"{'conv' if kind == 'conv' else 'linear'}.weight"], original)
        layer.unmerge()
        layer.unmerge()
        assert not layer.merged and torch.equal(base.weight, original)
        torch.testing.assert_close(layer(x), unmerged, atol=0, rtol=0)
        layer.merge()
        layer.load_state_dict(saved)  # loading unmerges first, so the delta is not counted twice
        assert not layer.merged
        torch.testing.assert_close(layer(x), unmerged, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------ classifiers, layouts

def test_unknown_classifier_name():
    with pytest.raises(ValueError, match="ResNet18, ResNet50, ResNet152, DEIT"):
        build_classifier("ResNet34")
    assert isinstance(build_classifier(" ResNet18"), nn.Module)  # PPAP's own " ResNet18" typo is harmless


def test_imagenet_normalize():
    x = torch.zeros(1, 3, 2, 2)
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(imagenet_normalize(x)[0, :, 0, 0], expected)


@pytest.mark.parametrize("name", NAMES)
def test_released_layouts(manifest, name):
    torch.set_num_threads(1)
    plain = build_classifier(name)
    assert _layout(plain) == manifest[f"{name}/finetune"]
    student = add_lora(plain, name, r=16, lora_alpha=8)
    assert _layout(student) == manifest[f"{name}/ppap_r16"]
    assert ppap_trainable_names(student, name) == manifest[f"{name}/ppap_r16_trainable"]
    trainable = freeze_for_ppap(student, name)
    assert [n for n, p in student.named_parameters() if p.requires_grad] == trainable
    linear = name == "DEIT"
    assert {layer.scale for _, layer in lora_layers(student)} == ({1.0} if linear else {0.5})

    # A fresh student (B = 0) computes the teacher's function on the input convention it was trained with.
    plain.eval(), student.eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        teacher_in = imagenet_normalize(x) if linear else x
        torch.testing.assert_close(student(x), plain(teacher_in), atol=1e-5, rtol=1e-5)

    for model, layout in ((plain, "finetune"), (student, "ppap_r16")):
        sd = _dict_from_manifest(manifest[f"{name}/{layout}"])
        load_classifier_state_dict(model, sd)
        first_key = next(iter(sd))
        assert torch.equal(model.state_dict()[first_key], sd[first_key])


def test_wrong_layouts_fail_naming_keys(manifest):
    torch.set_num_threads(1)
    plain = build_classifier("ResNet50")
    student = add_lora(plain, "ResNet50")
    with pytest.raises(CheckpointLayoutError, match=r"resnet\.conv1\.lora_A.*finetune/multi_experts ResNet"):
        load_classifier_state_dict(student, _dict_from_manifest(manifest["ResNet50/finetune"]))
    with pytest.raises(CheckpointLayoutError, match=r"unexpected keys: resnet\.conv1\.lora_A"):
        load_classifier_state_dict(plain, _dict_from_manifest(manifest["ResNet50/ppap_r16"]))
    with pytest.raises(CheckpointLayoutError, match=r"layer1\.0\.conv3\.weight"):
        load_classifier_state_dict(plain, _dict_from_manifest(manifest["ResNet18/finetune"]))
    with pytest.raises(CheckpointLayoutError, match=r"resnet\.layer1\.0\.conv3\.weight"):
        load_classifier_state_dict(student, _dict_from_manifest(manifest["ResNet18/ppap_r16"]))


def test_lora_rank_mismatch_names_both_ranks():
    student16 = add_lora(build_classifier("ResNet18"), "ResNet18", r=16)
    student8 = add_lora(build_classifier("ResNet18"), "ResNet18", r=8)
    with pytest.raises(ValueError, match=r"checkpoint has rank 8.*built with rank 16"):
        load_classifier_state_dict(student16, student8.state_dict())
    experts = LoRAExpertSet(student16, "ResNet18", n_experts=2)
    with pytest.raises(ValueError, match=r"rank 8.*rank 16"):
        experts.load_expert_state_dicts([student8.state_dict()] * 2)


def test_init_path_loads_strictly(tmp_path):
    source = build_classifier("ResNet18")
    path = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), path)
    loaded = build_classifier("ResNet18", init_path=str(path))
    assert torch.equal(loaded.fc.weight, source.fc.weight)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_classifier("ResNet18", init_path=str(tmp_path / "missing.pt"))
    torch.save(add_lora(source, "ResNet18").state_dict(), tmp_path / "ppap.pt")
    with pytest.raises(CheckpointLayoutError, match=r"ppap\.pt.*missing keys: conv1\.weight"):
        build_classifier("ResNet18", init_path=str(tmp_path / "ppap.pt"))


# ------------------------------------------------------------------------------------------------- routing

def test_routing_of_respaced_samplers():
    """Default (PPAP's released sampler): a boundary step goes to the lower expert, so under ddim25 the experts
    0..4 guide 6/5/5/5/4 steps; the training rule (half-open ranges) gives 5 each."""
    ranges = ExpertRanges(5)
    assert ranges.edges == [0, 200, 400, 600, 800, 1000] and ranges.routing == "original"

    def routed(respacing, rule):
        diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing=respacing)
        return ExpertRanges(5, routing=rule).assign(sorted(diffusion.timestep_map, reverse=True))

    assert routed("ddim25", "original") == {
        4: [960, 920, 880, 840],
        3: [800, 760, 720, 680, 640],
        2: [600, 560, 520, 480, 440],
        1: [400, 360, 320, 280, 240],
        0: [200, 160, 120, 80, 40, 0],
    }
    assert routed("ddim25", "training") == {
        4: [960, 920, 880, 840, 800],
        3: [760, 720, 680, 640, 600],
        2: [560, 520, 480, 440, 400],
        1: [360, 320, 280, 240, 200],
        0: [160, 120, 80, 40, 0],
    }
    assert routed("ddim10", "original") == {4: [900], 3: [800, 700], 2: [600, 500], 1: [400, 300],
                                            0: [200, 100, 0]}
    assert routed("ddim10", "training") == {4: [900, 800], 3: [700, 600], 2: [500, 400], 1: [300, 200],
                                            0: [100, 0]}
    for rule in ("original", "training"):  # "250" (0, 4, ..., 995, 999) never lands on a boundary
        counts_250 = {i: len(v) for i, v in routed("250", rule).items()}
        assert counts_250 == {0: 50, 1: 50, 2: 50, 3: 50, 4: 50}


def test_routing_boundaries_and_errors():
    ranges, training = ExpertRanges(5), ExpertRanges(5, routing="training")
    assert ranges.index(200) == 0 and ranges.index(201) == 1 and ranges.index(199) == 0
    assert training.index(200) == 1 and training.index(199) == 0
    assert ranges.index(0) == 0 and ranges.index(999) == 4 and training.index(999) == 4
    assert ranges.index(torch.tensor([401, 600, 450])) == 2 and training.index(torch.tensor([400, 599])) == 2
    # Fractional train indices: the original rule sends t where ceil(t) goes, the training rule floor(t).
    assert ranges.index(199.5) == 0 and ranges.index(200.25) == 1 and training.index(199.5) == 0
    level = NoiseLevel(alpha=torch.ones(2, dtype=torch.float64), sigma=torch.ones(2, dtype=torch.float64),
                       t=torch.tensor([801, 802]), num_train_steps=1000)
    assert ranges.index(level) == 4
    with pytest.raises(ValueError, match=r"spans experts \[0, 1\]"):
        ranges.index(torch.tensor([200, 201]))
    with pytest.raises(ValueError, match=r"spans experts \[0, 1\]"):
        training.index(torch.tensor([199, 200]))
    with pytest.raises(ValueError, match="outside"):
        training.index(1000)
    with pytest.raises(ValueError, match="outside"):
        ranges.index(-1)
    for bad in (0, -1, 1001, True):
        with pytest.raises(ValueError):
            ExpertRanges(bad)
    with pytest.raises(ValueError, match="original, training"):
        ExpertRanges(5, routing="upper")
    assert ExpertRanges(3).edges == [0, 333, 666, 1000]  # n need not divide the steps (PPAP's floors)
    assert ExpertRanges(1).edges == [0, 1000] and ExpertRanges(8).edges[1] == 125


# ----------------------------------------------------------------------------------------------- expert sets

@pytest.fixture(scope="module")
def resnet50_experts():
    torch.set_num_threads(1)
    plain_bytes = unique_storage_bytes(build_classifier("ResNet50"))
    student = add_lora(build_classifier("ResNet50"), "ResNet50", r=16, lora_alpha=8, inplace=True)
    experts = LoRAExpertSet(student, "ResNet50", n_experts=5).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for slot_index in range(5):
            slot = experts.experts[slot_index]
            for name in experts.per_expert_names:
                if name.endswith("lora_B"):
                    tensor = slot.tensor(name)
                    tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.02)
    return experts, plain_bytes


def test_lora_expert_set_memory(resnet50_experts):
    experts, plain_bytes = resnet50_experts
    ratio = unique_storage_bytes(experts) / plain_bytes
    assert ratio <= 1.3, f"5 LoRA experts take {ratio:.3f}x one ResNet50"


def test_lora_expert_state_dict_is_a_released_checkpoint(resnet50_experts, manifest):
    experts, _ = resnet50_experts
    state = experts.expert_state_dict(3)
    assert [[k, list(v.shape)] for k, v in state.items()] == manifest["ResNet50/ppap_r16"]
    slot_tensor = experts.experts[3].tensor("resnet.conv1.lora_B")
    assert state["resnet.conv1.lora_B"].data_ptr() == slot_tensor.data_ptr()


def test_lora_expert_switch_changes_output_without_copies(resnet50_experts):
    experts, _ = resnet50_experts
    torch.set_num_threads(1)

    def pointers():
        tensors = [t for _, t in experts.named_parameters(remove_duplicate=False)]
        tensors += [t for _, t in experts.named_buffers(remove_duplicate=False)]
        return sorted({t.untyped_storage().data_ptr() for t in tensors})

    stem = experts.backbone.resnet.conv1
    bn = experts.backbone.resnet.layer1[0].bn1
    before = pointers()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        out_low = experts(x, torch.tensor([100]))
        assert experts.active == 0
        out_high = experts(x, torch.tensor([950]))
        assert experts.active == 4
        assert stem.lora_B is experts.experts[4].tensor("resnet.conv1.lora_B")
        assert bn.running_mean is experts.experts[4].tensor("resnet.layer1.0.bn1.running_mean")
        assert not torch.allclose(out_low, out_high, atol=1e-4)
        torch.testing.assert_close(experts(x, 150), out_low, atol=0, rtol=0)
    assert pointers() == before
    assert not stem.conv.weight.requires_grad and stem.lora_A.requires_grad


def test_lora_expert_set_loads_released_checkpoints():
    torch.set_num_threads(1)
    student = add_lora(build_classifier("ResNet18"), "ResNet18", inplace=True)
    experts = LoRAExpertSet(student, n_experts=2)
    released = []
    for i in range(2):
        sd = {k: v.clone() for k, v in experts.expert_state_dict(0).items()}
        sd["resnet.conv1.lora_B"].fill_(i + 1)
        sd["resnet.bn1.running_var"].fill_(10 * i + 2)
        released.append(sd)
    experts.load_expert_state_dicts(released)
    for i in range(2):
        assert experts.experts[i].tensor("resnet.conv1.lora_B").eq(i + 1).all()
        assert experts.experts[i].tensor("resnet.bn1.running_var").eq(10 * i + 2).all()
    assert experts.backbone.resnet.conv1.lora_B.eq(1).all()  # expert 0 stays active, still by reference

    bad = [released[0], {k: v.clone() for k, v in released[1].items()}]
    bad[1]["resnet.fc.weight"][0, 0] += 1
    with pytest.raises(ValueError, match=r"'resnet\.fc\.weight' differs between expert 0 and expert 1"):
        experts.load_expert_state_dicts(bad)
    plain = {k.removeprefix("resnet."): v for k, v in released[0].items() if "lora" not in k}
    with pytest.raises(CheckpointLayoutError, match=r"expert 0 checkpoint .*missing keys"):
        experts.load_expert_state_dicts([plain, plain])

    experts.double()  # conversions reach every expert once and keep the backbone aliased to the active one
    assert experts.backbone.resnet.conv1.lora_B is experts.experts[0].tensor("resnet.conv1.lora_B")
    assert experts.backbone.resnet.conv1.lora_B.dtype == torch.float64
    assert experts.experts[1].tensor("resnet.conv1.lora_B").eq(2).all()


def test_full_expert_set_routes_and_loads_strictly():
    torch.set_num_threads(1)
    experts = FullExpertSet.build("ResNet18", n_experts=2).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(experts(x, 500), experts.experts[0](x))  # PPAP's sampler: the lower one
        torch.testing.assert_close(experts(x, torch.tensor([501, 999])), experts.experts[1](x))
        upper = FullExpertSet(list(experts.experts), routing="training")
        torch.testing.assert_close(upper(x, 500), experts.experts[1](x))
    sds = [{k: v.clone() for k, v in m.state_dict().items()} for m in reversed(experts.experts)]
    experts.load_expert_state_dicts(sds)
    assert torch.equal(experts.experts[0].fc.weight, sds[0]["fc.weight"])
    with pytest.raises(CheckpointLayoutError, match="expert 1 checkpoint"):
        experts.load_expert_state_dicts([sds[0], add_lora(experts.experts[0], "ResNet18").state_dict()])
    with pytest.raises(ValueError, match="1001 is more than the 1000"):
        FullExpertSet.build("ResNet18", n_experts=1001)
