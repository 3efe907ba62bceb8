"""Checkpoint loading: safe torch.load, flag presets, flag inference from keys, and mismatch diagnostics.

Published-size models are built on the meta device (shapes only, no memory); anything that runs a forward
pass uses 32px, 32-channel models.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import pytest
import torch

from conftest import fixtures_dir
from guided_diffusion.configs import PRESET_DIR, available_presets, load_preset
from guided_diffusion.models.checkpoints import (
    CheckpointMismatchError,
    infer_unet_flags,
    load_checkpoint,
    load_state_dict_checked,
)
from guided_diffusion.models.unet import EncoderUNetModel, UNetModel
from guided_diffusion.models.unet_blocks import AttentionBlock, QKVAttention
from guided_diffusion.script_util import (
    DEFAULT_CHANNEL_MULT,
    classifier_and_diffusion_defaults,
    create_classifier_and_diffusion,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)

# ------------------------------------------------------------------------------------------------ helpers


def _fixture_path(relative: str) -> Path:
    path = fixtures_dir() / relative
    if not path.exists():
        pytest.skip(f"golden fixture {path} not found (shared fixtures folder absent; set GD_FIXTURES)")
    return path


def _tiny(**overrides) -> dict:
    """32px, 32-channel UNet flags: 2 levels, 1 ResBlock per level, attention at 16px."""
    flags = model_and_diffusion_defaults()
    flags.update(image_size=32, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                 attention_resolutions="16")
    flags.update(overrides)
    return flags


def _tiny_clf(**overrides) -> dict:
    flags = classifier_and_diffusion_defaults()
    flags.update(image_size=32, classifier_width=32, classifier_depth=1, classifier_channel_mult="1,2",
                 classifier_attention_resolutions="16", classifier_num_head_channels=32,
                 classifier_num_classes=10)
    flags.update(overrides)
    return flags


def _build(flags: dict, meta: bool = False):
    factory = create_classifier_and_diffusion if "classifier_width" in flags else create_model_and_diffusion
    if meta:
        with torch.device("meta"):
            return factory(**flags)[0]
    return factory(**flags)[0]


@functools.lru_cache(maxsize=None)
def _preset_model(name: str):
    return _build(load_preset(name), meta=True)


def _mismatch(ckpt_flags: dict, model_flags: dict, meta: bool = False) -> CheckpointMismatchError:
    state_dict = _build(ckpt_flags, meta=meta).state_dict()
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_checked(_build(model_flags, meta=meta), state_dict, flags=model_flags)
    return info.value


def _effective_resolutions(flags: dict, image_size: int, levels: int) -> set:
    """The flag's attention resolutions that a UNet with `levels` levels actually reaches."""
    text = flags.get("attention_resolutions", flags.get("classifier_attention_resolutions"))
    return {int(r) for r in text.split(",") if r and image_size // int(r) < 2 ** levels}


def _assert_inferred(flags: dict, inferred: dict) -> None:
    """Every flag infer_unet_flags can read must equal the flag the model was built with."""
    clf = "classifier_width" in flags
    get = (lambda k: flags["classifier_" + {"num_channels": "width", "num_res_blocks": "depth"}.get(k, k)]) \
        if clf else flags.__getitem__
    size = flags["image_size"]
    mult = get("channel_mult") or ",".join(str(m) for m in DEFAULT_CHANNEL_MULT[size])
    assert inferred["model_type"] == ("classifier" if clf else "unet")
    assert inferred["num_channels"] == get("num_channels")
    assert inferred["num_res_blocks"] == get("num_res_blocks")
    assert inferred["channel_mult"] == mult
    assert inferred["use_scale_shift_norm"] == get("use_scale_shift_norm")
    if mult.count(",") > 0:  # resampling layers exist only with two levels or more
        assert inferred["resblock_updown"] == get("resblock_updown")
    levels = mult.count(",") + 1
    got = {int(r) for r in inferred["attention_resolutions"].split(",") if r}
    assert got == _effective_resolutions(flags, size, levels)
    if clf:
        assert inferred["pool"] == flags["classifier_pool"]
        assert inferred["out_channels"] == flags["classifier_num_classes"]
        if flags["classifier_pool"] == "attention":
            assert inferred["image_size"] == size
    else:
        assert inferred["learn_sigma"] == flags["learn_sigma"]
        assert inferred["class_cond"] == flags["class_cond"]


# ------------------------------------------------------------------------------------------------ presets

MODEL_PRESETS = ["256x256_diffusion_uncond", "256x256_diffusion", "128x128_diffusion", "64x64_diffusion",
                 "512x512_diffusion"]
CLASSIFIER_PRESETS = ["256x256_classifier", "128x128_classifier", "64x64_classifier", "512x512_classifier"]

# Counts from the notes (section 2.7). The conditional 256 model is derived: uncond + label_emb (1000, 4*256).
PRESET_COUNTS = {
    "256x256_diffusion_uncond": (566, 552_814_086),
    "256x256_diffusion": (567, 552_814_086 + 1000 * 1024),
    "256x256_classifier": (249, 54_096_360),
    "64x64_diffusion": (541, 295_904_454),
}
PRESET_SHAPES = {
    "256x256_diffusion_uncond": {
        "input_blocks.16.1.qkv.weight": (3072, 1024, 1), "input_blocks.1.0.emb_layers.1.weight": (512, 1024),
        "output_blocks.2.0.skip_connection.weight": (1024, 2048, 1, 1), "out.2.weight": (6, 256, 3, 3)},
    "256x256_classifier": {
        "out.2.positional_embedding": (512, 65), "out.2.qkv_proj.weight": (1536, 512, 1),
        "out.2.c_proj.weight": (1000, 512, 1), "out.2.c_proj.bias": (1000,), "out.0.weight": (512,)},
    "64x64_diffusion": {"label_emb.weight": (1000, 768), "time_embed.0.weight": (768, 192)},
}


def test_presets_exist_with_the_factory_keys():
    assert set(available_presets()) == set(MODEL_PRESETS + CLASSIFIER_PRESETS)
    for name in MODEL_PRESETS:
        assert set(load_preset(name)) == set(model_and_diffusion_defaults()), name
    for name in CLASSIFIER_PRESETS:
        assert set(load_preset(name)) == set(classifier_and_diffusion_defaults()), name
    assert load_preset("64x64_classifier")["classifier_depth"] == 4
    assert load_preset(PRESET_DIR / "64x64_diffusion.json") == load_preset("64x64_diffusion.json")


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(FileNotFoundError) as info:
        load_preset("256x256_difusion")
    assert "Did you mean '256x256_diffusion'" in str(info.value)
    assert "64x64_classifier" in str(info.value)


@pytest.mark.parametrize("name", MODEL_PRESETS + CLASSIFIER_PRESETS)
def test_preset_builds_on_meta_with_published_counts_and_shapes(name):
    model = _preset_model(name)
    assert next(model.parameters()).device.type == "meta"
    state = model.state_dict()
    if name in PRESET_COUNTS:
        keys, params = PRESET_COUNTS[name]
        assert len(state) == keys
        assert sum(p.numel() for p in model.parameters()) == params
    for key, shape in PRESET_SHAPES.get(name, {}).items():
        assert tuple(state[key].shape) == shape, key
    assert ("label_emb.weight" in state) == (name.endswith("_diffusion"))
    # Attention order: new only for the 64x64 model; the classifiers' blocks are legacy (their pool is new).
    blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    new_order = {isinstance(m.attention, QKVAttention) for m in blocks}
    assert new_order == {name == "64x64_diffusion"}


def test_256_uncond_topology_matches_the_notes():
    state = _preset_model("256x256_diffusion_uncond").state_dict()
    def with_attention(prefix):
        return {int(k.split(".")[1]) for k in state if k.startswith(prefix) and k.endswith(".1.qkv.weight")}

    attn_in, attn_out = with_attention("input_blocks."), with_attention("output_blocks.")
    assert attn_in == {10, 11, 13, 14, 16, 17}
    assert attn_out == set(range(9))
    assert "middle_block.1.qkv.weight" in state
    model64 = _preset_model("64x64_diffusion")
    assert len(model64.input_blocks) == len(model64.output_blocks) == 16


@pytest.mark.parametrize("name", MODEL_PRESETS + CLASSIFIER_PRESETS)
def test_infer_flags_of_presets(name):
    flags = load_preset(name)
    inferred = infer_unet_flags(_preset_model(name).state_dict(), image_size=flags["image_size"])
    _assert_inferred(flags, inferred)


# ------------------------------------------------------------------------------------------- inference


@pytest.mark.parametrize("fixture", ["adm_unet_a.pt", "adm_unet_b.pt"])
def test_infer_flags_of_fixture_unets(fixture):
    data = torch.load(_fixture_path(f"adm/{fixture}"), weights_only=True)
    inferred = infer_unet_flags(data["state_dict"], image_size=data["flags"]["image_size"])
    _assert_inferred(data["flags"], inferred)


def test_infer_flags_of_fixture_classifier():
    data = torch.load(_fixture_path("adm/adm_classifier.pt"), weights_only=True)
    kw, got = data["kwargs"], infer_unet_flags(data["state_dict"])
    assert got["model_type"] == "classifier"
    assert (got["num_channels"], got["num_res_blocks"]) == (kw["model_channels"], kw["num_res_blocks"])
    assert got["channel_mult"] == ",".join(map(str, kw["channel_mult"]))
    assert got["attention_ds"] == tuple(kw["attention_resolutions"])
    for key in ("image_size", "pool", "out_channels", "resblock_updown", "use_scale_shift_norm"):
        assert got[key] == kw[key], key


@pytest.mark.parametrize("overrides", [
    {},
    dict(resblock_updown=True, learn_sigma=True),
    dict(num_res_blocks=2, channel_mult="1,2,2", attention_resolutions="16,8"),
    dict(class_cond=True, use_scale_shift_norm=False, attention_resolutions=""),
    dict(num_res_blocks=3, channel_mult="1,1,2", attention_resolutions="32,8", resblock_updown=True),
    dict(num_res_blocks=2, channel_mult="1", attention_resolutions="32"),
], ids=str)
def test_infer_flags_of_tiny_unets(overrides):
    flags = _tiny(**overrides)
    _assert_inferred(flags, infer_unet_flags(_build(flags, meta=True).state_dict(), image_size=32))


@pytest.mark.parametrize("overrides", [
    {},
    dict(classifier_pool="adaptive", classifier_resblock_updown=False, classifier_depth=2),
    dict(classifier_pool="spatial", classifier_channel_mult="1,2,2", classifier_attention_resolutions="16,8"),
    dict(classifier_pool="spatial_v2", classifier_use_scale_shift_norm=False, classifier_depth=3),
], ids=str)
def test_infer_flags_of_tiny_classifiers(overrides):
    flags = _tiny_clf(**overrides)
    _assert_inferred(flags, infer_unet_flags(_build(flags, meta=True).state_dict(), image_size=32))


def test_ambiguous_classifier_layout_is_not_guessed():
    # Down-ResBlocks look like ordinary ResBlocks: without attention, 2 levels x 1 block and 1 level x 3
    # blocks have the same keys. Only the image size (with the pool grid) settles it.
    flags = _tiny_clf(classifier_attention_resolutions="", classifier_channel_mult="1,1")
    state = _build(flags, meta=True).state_dict()
    assert "num_res_blocks" not in infer_unet_flags(state)
    assert infer_unet_flags(state, image_size=32)["num_res_blocks"] == 1


# ------------------------------------------------------------------------------------------ diagnostics

WRONG_FLAGS = [  # (checkpoint flags, model flags, expected hint, a key the message must list)
    (dict(class_cond=True), {}, "--class_cond True", "label_emb.weight"),
    ({}, dict(class_cond=True), "--class_cond False", "label_emb.weight"),
    (dict(learn_sigma=True), {}, "--learn_sigma True", "out.2.weight: (6, 32, 3, 3) vs (3, 32, 3, 3)"),
    (dict(num_channels=64), {}, "--num_channels 64", "time_embed.0.weight"),
    (dict(num_res_blocks=2), {}, "--num_res_blocks 2", "input_blocks.4.0.in_layers.2.weight"),
    (dict(resblock_updown=True), {}, "--resblock_updown True", "input_blocks.2.0.op.weight"),
    ({}, dict(resblock_updown=True), "--resblock_updown False", "output_blocks.1.2.conv.weight"),
    (dict(attention_resolutions="16"), dict(attention_resolutions="32"), "--attention_resolutions 16",
     "input_blocks.3.1.qkv.weight"),
    (dict(use_scale_shift_norm=False), {}, "--use_scale_shift_norm False",
     "input_blocks.1.0.emb_layers.1.weight"),
    (dict(channel_mult="1,2,2"), {}, "--channel_mult 1,2,2", "input_blocks.5.0.in_layers.2.weight"),
]


@pytest.mark.parametrize("ckpt, model, hint, key", WRONG_FLAGS, ids=lambda v: str(v)[:40])
def test_wrong_flag_is_named(ckpt, model, hint, key):
    err = _mismatch(_tiny(**ckpt), _tiny(**model))
    assert len(err.hints) == 1 and err.hints[0].startswith(hint.split()[0] + ":"), err.hints
    assert f"looks like {hint};" in str(err)
    assert key in str(err)
    assert "use_new_attention_order" in str(err)  # the one flag the keys cannot check


@pytest.mark.parametrize("ckpt, model, hint", [
    (dict(classifier_depth=2), {}, "--classifier_depth 2"),
    (dict(classifier_width=64), {}, "--classifier_width 64"),
    ({}, dict(classifier_pool="adaptive"), "--classifier_pool attention"),
    ({}, dict(classifier_resblock_updown=False), "--classifier_resblock_updown True"),
    (dict(image_size=64, classifier_attention_resolutions="32"), {}, "--image_size 64"),
    (dict(classifier_num_classes=1000), {}, "--classifier_num_classes 1000"),
], ids=str)
def test_wrong_classifier_flag_is_named(ckpt, model, hint):
    err = _mismatch(_tiny_clf(**ckpt), _tiny_clf(**model))
    assert len(err.hints) == 1 and f"looks like {hint};" in err.hints[0], err.hints
    assert "use_new_attention_order" not in str(err)


def test_unet_and_classifier_swapped():
    err = _mismatch(_tiny_clf(), _tiny(), meta=True)
    assert "--classifier_path" in str(err) and "Missing keys" in str(err)
    err = _mismatch(_tiny(), _tiny_clf(), meta=True)
    assert "--model_path" in str(err) and "Unexpected keys" in str(err)


def test_published_traps_on_meta():
    # 64x64_diffusion.pt needs --num_res_blocks 3; its classifier --classifier_depth 4.
    flags64 = load_preset("64x64_diffusion")
    err = _mismatch(flags64, dict(flags64, num_res_blocks=2), meta=True)
    assert len(err.hints) == 1 and "--num_res_blocks 3;" in err.hints[0]
    assert "... and" in str(err) and "more" in str(err)  # long lists are truncated with a count
    clf64 = load_preset("64x64_classifier")
    err = _mismatch(clf64, dict(clf64, classifier_depth=2), meta=True)
    assert len(err.hints) == 1 and "--classifier_depth 4;" in err.hints[0]
    err = _mismatch(load_preset("256x256_diffusion"), load_preset("256x256_diffusion_uncond"), meta=True)
    assert len(err.hints) == 1 and "--class_cond True;" in err.hints[0]
    # Wrong --image_size with channel_mult "": the channel multiples point at 256; attention is not blamed.
    err = _mismatch(load_preset("256x256_diffusion_uncond"),
                    dict(load_preset("256x256_diffusion_uncond"), image_size=128), meta=True)
    assert len(err.hints) == 1 and "--image_size 256" in err.hints[0] and "--channel_mult" in err.hints[0]


def test_foreign_state_dict_is_recognised():
    with pytest.raises(CheckpointMismatchError, match="does not look like an ADM"):
        load_state_dict_checked(_build(_tiny(), meta=True), {"blocks.0.attn.qkv.weight": torch.zeros(3)})


def test_strict_false_tolerates_keys_but_not_shapes():
    model = _build(_tiny())
    state = dict(model.state_dict(), extra=torch.zeros(1))
    del state["out.2.bias"]
    result = load_state_dict_checked(model, state, strict=False)
    assert result.missing_keys == ["out.2.bias"] and result.unexpected_keys == ["extra"]
    state["out.2.weight"] = torch.zeros(6, 32, 3, 3)
    with pytest.raises(CheckpointMismatchError, match="--learn_sigma True"):
        load_state_dict_checked(model, state, strict=False)


def test_successful_load_copies_weights_and_strips_module_prefix():
    source, target = _build(_tiny(class_cond=True)), _build(_tiny(class_cond=True))
    wrapped = {"module." + k: v for k, v in source.state_dict().items()}
    result = load_state_dict_checked(target, wrapped)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


# ----------------------------------------------------------------------------------------- load_checkpoint


@pytest.mark.parametrize("layout", ["plain", "module", "state_dict", "model", "with_metadata"])
def test_load_checkpoint_unwraps(tmp_path, layout):
    state = _build(_tiny()).state_dict()
    obj = {"plain": state, "module": {"module." + k: v for k, v in state.items()},
           "state_dict": {"state_dict": state, "global_step": 0}, "model": {"model": state},
           "with_metadata": {"flags": _tiny(), "state_dict": state}}[layout]
    torch.save(obj, tmp_path / "ckpt.pt")
    loaded = load_checkpoint(tmp_path / "ckpt.pt")
    assert list(loaded) == list(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_load_checkpoint_rejects_files_without_weights(tmp_path):
    torch.save({"step": 3, "note": "no tensors"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="no state dict"):
        load_checkpoint(tmp_path / "x.pt")


def test_missing_file_names_the_flag(tmp_path):
    path = tmp_path / "models" / "64x64_diffusion.pt"
    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "--model_path" in str(info.value)
    with pytest.raises(FileNotFoundError, match="--classifier_path"):
        load_checkpoint(path, flag="--classifier_path")


def _leave_mark(path):  # what the malicious pickle would run on load
    Path(path).write_text("code ran")


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return _leave_mark, (self.path,)


def test_load_checkpoint_never_runs_code(tmp_path, monkeypatch):
    mark = tmp_path / "mark.txt"
    torch.save({"w": torch.zeros(2), "evil": _Payload(str(mark))}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not mark.exists()
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    torch.save({"w": torch.zeros(2)}, tmp_path / "ok.pt")
    load_checkpoint(tmp_path / "ok.pt")
    assert calls and calls[0].get("weights_only") is True


@pytest.mark.parametrize("name,content,words", [
    ("empty.pt", b"", ["is empty (0 bytes)"]),
    ("truncated.pt", None, ["(300 bytes)", "truncated or in another format", "PytorchStreamReader"]),
    ("notes.pt", b"hello", ["truncated or in another format"]),
    ("garbage.pt", b"\x00\x01 not a pickle" * 8, ["truncated or in another format", "unpickling"]),
])
def test_a_file_that_is_no_checkpoint_is_named_and_not_called_unsafe(tmp_path, name, content, words):
    path = tmp_path / name
    if content is None:
        torch.save({"w": torch.ones(1000)}, tmp_path / "full.pt")
        content = (tmp_path / "full.pt").read_bytes()[:300]
    path.write_bytes(content)
    with pytest.raises(ValueError) as exc:
        load_checkpoint(path, flag="--model_path")
    message = str(exc.value)
    for word in words + [name, "--model_path"]:
        assert word in message, message
    assert "could run code" not in message and "weights_only" not in message


def test_an_unsafe_pickle_is_refused_without_suggesting_weights_only_false(tmp_path):
    torch.save({"evil": _Payload(str(tmp_path / "mark.txt"))}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError) as exc:
        load_checkpoint(tmp_path / "evil.pt")
    assert "_leave_mark" in str(exc.value) and "state_dict" in str(exc.value)
    assert "weights_only" not in str(exc.value)


@pytest.mark.filterwarnings("ignore:attention_resolutions")  # fixture b asks for 8px attention at 32px
def test_fixture_round_trip_through_the_checked_loader():
    path = _fixture_path("adm/adm_unet_b.pt")
    data = torch.load(path, weights_only=True)
    model = _build(data["flags"]).eval()
    load_state_dict_checked(model, load_checkpoint(path), flags=data["flags"])  # unwraps flags/state_dict
    with torch.no_grad():
        out = model(data["x"], data["t"], **data["kwargs"])
    assert (out - data["out"]).abs().max().item() < 1e-4
    assert isinstance(model, UNetModel) and not isinstance(model, EncoderUNetModel)
