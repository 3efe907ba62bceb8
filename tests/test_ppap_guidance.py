"""PPAP guidance at sampling time: the four methods load their checkpoints strictly, route experts by the
original train index, and drive classifier_sample.py end to end on a tiny model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from guided_diffusion import logger
from guided_diffusion.cli import run_cli
from guided_diffusion.guidance import classifier_cond_fn, classifier_guide
from guided_diffusion.ppap import (CheckpointLayoutError, LoRAExpertSet, add_lora, build_classifier,
                                   imagenet_normalize, lora_layers)
from guided_diffusion.flags import read_flags_beside
from guided_diffusion.ppap.guidance import load_guidance_classifier
from script_runs import import_script, save_tiny_adm

NAME, CLASSES, RANK = "ResNet18", 10, 4
classifier_sample = import_script("classifier_sample")


def _randomize_bn(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BatchNorm statistics and affine, so eval mode and expert-specific buffers matter."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def _write(folder, models_or_dicts, flags=None) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    n, paths = len(models_or_dicts), []
    for i, sd in enumerate(models_or_dicts):
        sd = sd.state_dict() if isinstance(sd, torch.nn.Module) else sd
        paths.append(str(folder / f"{i}_max{n}.ckpt"))
        torch.save(sd, paths[-1])
    if flags is not None:
        base = dict(classifier_name=NAME, classifier_num_classes=CLASSES, diffusion_steps=1000,
                    noise_schedule="linear", gamma=16, lora_alpha=8.0, n_experts=5)
        (folder / "flags.json").write_text(json.dumps(dict(base, **flags)))
    return paths


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Saved experts of every method, with the in-memory networks that produced them (eval mode)."""
    root, gen = tmp_path_factory.mktemp("ppap_guidance"), torch.Generator().manual_seed(7)
    full = []
    for _ in range(3):
        model = build_classifier(NAME, num_classes=CLASSES)
        _randomize_bn(model, gen)
        full.append(model.eval())
    student = add_lora(build_classifier(NAME, num_classes=CLASSES), NAME, r=RANK, lora_alpha=8.0,
                       scale_convention="alpha_over_r", inplace=True)
    _randomize_bn(student, gen)
    ppap = LoRAExpertSet(student, NAME, n_experts=2).eval()
    with torch.no_grad():
        for i in range(2):  # every expert: its own LoRA delta and BatchNorm statistics
            ppap.select(i)
            for _, layer in lora_layers(ppap.backbone):
                layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.05)
            _randomize_bn(ppap.backbone, gen)
    ppap_sds = [{k: v.clone() for k, v in ppap.expert_state_dict(i).items()} for i in range(2)]
    out = dict(
        full=full, ppap=ppap, root=root,
        finetune=_write(root / "finetune", full[:1], dict(method="finetune")),  # n_experts=5 unused there
        multi=_write(root / "multi", full[1:], dict(method="multi_experts", n_experts=2)),
        clean=_write(root / "clean", full[:1], dict(method="clean")),
        ppap_paths=_write(root / "ppap", ppap_sds, dict(method="ppap", n_experts=2, gamma=RANK,
                                                        lora_scale_convention="alpha_over_r")),
        released=_write(root / "released", ppap_sds),  # no flags.json: PPAP's published form
        full_bare=_write(root / "full_bare", full[:1]), ppap_sds=ppap_sds)
    out["ppap_one"] = out["ppap_paths"][:1]
    return out


def _x(seed=0, n=3, size=16):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _t(value, n=3):
    return torch.full((n,), value, dtype=torch.long)


def _ref_ppap(ckpts, i, x):
    ckpts["ppap"].select(i)
    with torch.no_grad():
        return ckpts["ppap"].backbone(x)


def _load(method, paths, **kw):
    return load_guidance_classifier(method, paths, classifier_name=kw.pop("classifier_name", NAME),
                                    num_classes=kw.pop("num_classes", CLASSES), **kw)


def test_finetune_reproduces_the_saved_classifier_on_raw_inputs(ckpts):
    module, x = _load("finetune", ckpts["finetune"]), _x()
    with torch.no_grad():
        expected = ckpts["full"][0](x)
        for t in (0, 999):
            assert torch.equal(module(x, _t(t)), expected)


def test_multi_experts_route_by_original_train_index(ckpts):
    module, x = _load("multi_experts", ckpts["multi"]), _x()
    with torch.no_grad():
        e0, e1 = ckpts["full"][1](x), ckpts["full"][2](x)
        assert not torch.allclose(e0, e1)
        # PPAP's released routing: the boundary t = 500 goes to the lower expert.
        for t, want in ((0, e0), (499, e0), (500, e0), (501, e1), (999, e1)):
            assert torch.equal(module(x, _t(t)), want), t
        trained = _load("multi_experts", ckpts["multi"], expert_routing="training")
        assert torch.equal(trained(x, _t(500)), e1) and torch.equal(trained(x, _t(499)), e0)


def test_ppap_experts_reproduce_saved_logits_merged_and_frozen(ckpts):
    module, x = _load("ppap", ckpts["ppap_paths"], gamma=RANK), _x(1)
    assert not module.training and not any(p.requires_grad for p in module.parameters())
    assert all(layer.merged and layer.r == RANK for _, layer in lora_layers(module.backbone))
    e0, e1 = _ref_ppap(ckpts, 0, x), _ref_ppap(ckpts, 1, x)
    assert not torch.allclose(e0, e1)
    with torch.no_grad():
        for t, want in ((500, e0), (501, e1), (0, e0), (999, e1), (3, e0)):  # switching back and forth
            assert torch.equal(module(x, _t(t)), want), t  # merged convs: bit-identical


def test_released_checkpoints_without_flags_use_the_released_convention(ckpts):
    # ResNet convs use alpha/r under "released" too, so the alpha_over_r experts load identically.
    module, x = _load("ppap", ckpts["released"], gamma=RANK), _x(2)
    assert {layer.scale_convention for _, layer in lora_layers(module.backbone)} == {"alpha_over_r"}
    with torch.no_grad():
        assert torch.equal(module(x, _t(501)), _ref_ppap(ckpts, 1, x))
        unit = _load("ppap", ckpts["released"], gamma=RANK, scale_convention="unit")
        assert not torch.allclose(unit(x, _t(501)), _ref_ppap(ckpts, 1, x))


def test_naive_feeds_imagenet_normalized_inputs_and_ignores_t(ckpts):
    module, x = _load("naive", ckpts["clean"]), _x(3)
    with torch.no_grad():
        want = ckpts["full"][0](imagenet_normalize(x))
        assert torch.equal(module(x, _t(10)), want) and torch.equal(module(x, None), want)
    with pytest.warns(UserWarning, match="randomly initialised"):
        _load("naive", [])


def test_read_flags_beside(ckpts):
    assert read_flags_beside(ckpts["ppap_paths"][0])["gamma"] == RANK
    assert read_flags_beside(ckpts["released"][0]) is None


def test_cond_fn_gradient_is_autograd_through_the_selected_expert(ckpts):
    module, x = _load("ppap", ckpts["ppap_paths"], gamma=RANK), _x(4)
    y = torch.tensor([1, 7, 3])
    grad = classifier_cond_fn(module, 2.5)(x, _t(700), y=y)
    ckpts["ppap"].select(1)
    x_ref = x.clone().requires_grad_(True)
    log_p = F.log_softmax(ckpts["ppap"].backbone(x_ref), dim=-1)
    (ref,) = torch.autograd.grad(log_p[torch.arange(3), y].sum(), x_ref)
    torch.testing.assert_close(grad, ref * 2.5, rtol=1e-5, atol=1e-7)
    assert grad.abs().sum() > 0


def _bare_copy(ckpts, key, folder, names=None) -> list:
    """The files of ``key`` copied without their flags.json, so only the state dicts can be checked."""
    out = ckpts["root"] / folder
    out.mkdir(exist_ok=True)
    paths = []
    for i, p in enumerate(ckpts[key]):
        paths.append(str(out / (names[i] if names else p.rsplit("/", 1)[-1])))
        shutil.copy(p, paths[-1])
    return paths


@pytest.mark.parametrize("method,key,kw,error,words", [
    # A ppap expert for a full-classifier method, and the reverse: flags.json says so first ...
    ("finetune", "ppap_one", {}, ValueError, ["--method ppap"]),
    ("multi_experts", "ppap_paths", {}, ValueError, ["--method ppap", "multi_experts"]),
    ("ppap", "multi", dict(gamma=RANK), ValueError, ["--method multi_experts"]),
    ("naive", "finetune", {}, ValueError, ["--method finetune"]),
    # ... and without flags.json the state dicts do.
    ("multi_experts", "released", {}, CheckpointLayoutError, ["PPAP LoRA expert", "use --method ppap"]),
    ("ppap", "full_bare", dict(n_experts=1), CheckpointLayoutError, ["not a PPAP LoRA expert"]),
    # Wrong classifier, classes, rank, alpha, convention or diffusion.
    ("finetune", "finetune", dict(classifier_name="ResNet50"), ValueError, ["classifier_name", "ResNet18"]),
    ("finetune", "full_bare", dict(classifier_name="ResNet50"), CheckpointLayoutError,
     ["holds a ResNet18", "--classifier_name is ResNet50"]),
    ("finetune", "full_bare", dict(num_classes=1000), CheckpointLayoutError, ["10 classes", "1000"]),
    ("ppap", "released", dict(gamma=8), ValueError, ["rank 4", "rank 8"]),
    ("ppap", "ppap_paths", dict(gamma=8), ValueError, ["gamma", "4", "8"]),
    ("ppap", "ppap_paths", dict(gamma=RANK, lora_alpha=16), ValueError, ["lora_alpha"]),
    ("ppap", "ppap_paths", dict(gamma=RANK, scale_convention="released"), ValueError,
     ["lora_scale_convention", "alpha_over_r"]),
    ("multi_experts", "multi", dict(total_steps=100), ValueError, ["diffusion_steps", "1000", "100"]),
    # Path count against expert count.
    ("multi_experts", "multi", dict(n_experts=3), ValueError, ["3 experts", "2 --classifier_path"]),
    ("ppap", "ppap_paths", dict(n_experts=1, gamma=RANK), ValueError, ["1 experts", "2 --classifier_path"]),
    ("finetune", "multi", {}, ValueError, ["exactly one"]),
])
def test_strictness(ckpts, method, key, kw, error, words):
    paths = _bare_copy(ckpts, key, "bare_" + key) if key in ("released", "full_bare") else ckpts[key]
    with pytest.raises(error) as exc:
        _load(method, paths, **kw)
    for w in words:
        assert w in str(exc.value), str(exc.value)


def test_strictness_of_paths_and_expert_files(ckpts):
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        _load("multi_experts", [ckpts["multi"][0], str(ckpts["root"] / "nowhere.ckpt")])
    with pytest.raises(ValueError, match="given in position 0"):
        _load("ppap", ckpts["ppap_paths"][::-1], gamma=RANK)
    one = _bare_copy(ckpts, "multi", "multi_bare")[:1]  # 0_max2.ckpt alone: half of a 2-expert run
    with pytest.raises(ValueError, match="expert 0 of 2"):
        _load("multi_experts", one)
    with pytest.raises(ValueError, match="exactly one"):
        _load("finetune", [])
    with pytest.raises(ValueError, match="at most one"):
        _load("naive", ckpts["multi"])


# ----------------------------------------------------------------------------------- classifier_sample.py

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An unconditional tiny ADM (100 diffusion steps) saved with its flags.json."""
    return save_tiny_adm(tmp_path_factory.mktemp("tiny_adm"), class_cond=False)


@pytest.fixture(scope="module")
def ppap_100(ckpts):
    """The ppap experts as if trained against the tiny model's 100-step diffusion."""
    folder = ckpts["root"] / "ppap100"
    flags = dict(method="ppap", n_experts=2, gamma=RANK, diffusion_steps=100,
                 lora_scale_convention="alpha_over_r")
    return _write(folder, ckpts["ppap_sds"], flags)


@pytest.fixture(autouse=True)
def _restore_logger(monkeypatch):
    """In-process runs configure the global logger: close their log files, then restore the previous one."""
    before = logger.get_current()
    monkeypatch.setattr(logger, "_current", before)
    yield
    if logger.get_current() is not before:
        logger.get_current().close()


def _sample(tmp_path, model_path, classifier_paths, name, *extra):
    argv = ["--model_path", model_path, "--classifier_path", *classifier_paths, "--num_samples", 4,
            "--batch_size", 4, "--timestep_respacing", 10, "--progress", False,
            "--log_path", tmp_path / name]
    run_cli(classifier_sample.main, [str(a) for a in argv + list(extra)])
    return np.load(tmp_path / name / "samples_4x8x8x3.npz")


def test_classifier_sample_ppap_routes_experts_and_writes_labelled_samples(tmp_path, tiny_model, ppap_100,
                                                                           monkeypatch):
    seen = []

    def recording_guide(classifier, scale, **kwargs):
        def watched(x, t):
            seen.append((int(t[0]), classifier.ranges.index(t), scale))
            return classifier(x, t)
        return classifier_guide(watched, scale, **kwargs)

    monkeypatch.setattr(classifier_sample, "classifier_guide", recording_guide)
    out = _sample(tmp_path, tiny_model, ppap_100, "ppap", "--method", "ppap")
    assert out["arr_0"].shape == (4, 8, 8, 3) and out["arr_0"].dtype == np.uint8
    assert out["arr_1"].dtype == np.int64 and out["arr_1"].shape == (4,)
    assert ((out["arr_1"] >= 0) & (out["arr_1"] < CLASSES)).all()
    assert (tmp_path / "ppap" / "samples_4x8x8x3_grid.png").is_file()
    # Original indices of the respaced 100-step diffusion, each sent to the expert that owns it.
    steps = [s for s, _, _ in seen]
    assert max(steps) > 50 > min(steps) and all(e == int(s >= 50) for s, e, _ in seen)
    assert {scale for _, _, scale in seen} == {7.5}  # the paper's default for PPAP methods
    flags = json.loads((tmp_path / "ppap" / "samples_4x8x8x3_flags.json").read_text())
    assert flags["gamma"] == RANK and flags["n_experts"] == 2 and flags["classifier_name"] == NAME
    assert flags["classifier_num_classes"] == CLASSES and flags["classifier_scale"] == 7.5


@pytest.mark.parametrize("rule", ["training", None])  # None: the default, PPAP's released rule
def test_classifier_sample_expert_routing_is_a_flag_and_is_saved(tmp_path, tiny_model, ppap_100, monkeypatch,
                                                                 rule):
    """ddim10 of the 100-step model visits t = 50, the boundary of the 2 experts: PPAP's sampler (the default)
    sends it to expert 0 (the first i with e_i <= t <= e_{i+1}), the training rule to expert 1 ([50, 100))."""
    seen = []

    def recording_guide(classifier, scale, **kwargs):
        def watched(x, t):
            seen.append((int(t[0]), classifier.expert_index(t)))
            return classifier(x, t)
        return classifier_guide(watched, scale, **kwargs)

    monkeypatch.setattr(classifier_sample, "classifier_guide", recording_guide)
    extra = [] if rule is None else ["--expert_routing", rule]
    _sample(tmp_path, tiny_model, ppap_100, "r", "--method", "ppap", "--timestep_respacing", "ddim10", *extra)
    edges = [0, 50, 100]
    if rule == "training":
        expected = [next(i for i in range(2) if edges[i] <= t < edges[i + 1]) for t, _ in seen]
    else:
        expected = [next(i for i in range(2) if edges[i] <= t <= edges[i + 1]) for t, _ in seen]
    assert [t for t, _ in seen] == list(range(90, -1, -10))
    assert [e for _, e in seen] == expected and expected[4] == (1 if rule == "training" else 0)
    flags = json.loads((tmp_path / "r" / "samples_4x8x8x3_flags.json").read_text())
    assert flags["expert_routing"] == (rule or "original")


def test_classifier_sample_target_label_keeps_the_seed_pairing(tmp_path, tiny_model, ppap_100):
    common = ["--method", "ppap", "--classifier_scale", 0]
    rand = _sample(tmp_path, tiny_model, ppap_100, "rand", *common)
    fixed = _sample(tmp_path, tiny_model, ppap_100, "fixed", *common, "--target_label", 3)
    assert (fixed["arr_1"] == 3).all()
    np.testing.assert_array_equal(rand["arr_0"], fixed["arr_0"])  # unguided: same seeds, same images
    guided = _sample(tmp_path, tiny_model, ppap_100, "guided", "--method", "ppap", "--target_label", 3,
                     "--classifier_scale", 50)
    assert (guided["arr_1"] == 3).all() and not np.array_equal(guided["arr_0"], fixed["arr_0"])


def test_classifier_sample_rejects_bad_paths(tmp_path, tiny_model, ppap_100, capsys):
    for method, paths, words in (("adm", ppap_100, ["--method adm takes one --classifier_path", "got 2"]),
                                 ("finetune", ppap_100[:1], ["--method ppap"])):
        with pytest.raises(SystemExit) as exc:
            _sample(tmp_path, tiny_model, paths, "bad_" + method, "--method", method)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words), err
        assert not (tmp_path / ("bad_" + method)).exists()
