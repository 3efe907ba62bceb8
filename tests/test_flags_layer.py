"""The one flag and config layer (two spellings, one merge order, one config loader, one flags.json reader), the
checkpoint loader's select/prefix, checkpoint hints in each family's flag names, and the restricted unpickler."""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle

import pytest
import torch

from guided_diffusion.flags import (add_dict_to_argparser, load_config, merge_flags, read_flags_beside,
                                    typed_dests)
from guided_diffusion.models.checkpoints import CheckpointMismatchError, load_checkpoint, load_state_dict_checked
from guided_diffusion.safe_pickle import ForbiddenGlobal, restricted_load
from guided_diffusion.vdpm import CHECKPOINT_FLAG_NAMES, model_from_flags

DEFAULTS = dict(lr=1e-4, use_ema=False, schedule="cosine", steps=10, name=None)


def parser_for(spelling: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_dict_to_argparser(parser, DEFAULTS, spelling=spelling)
    return parser


def test_two_spellings_share_destinations():
    adm = parser_for("adm").parse_args(["--use_ema", "True", "--lr", "0.5", "--steps", "3"])
    dash = parser_for("dash").parse_args(["--use-ema", "--lr", "0.5", "--steps", "3"])
    assert vars(adm) == vars(dash) == dict(DEFAULTS, use_ema=True, lr=0.5, steps=3)
    assert parser_for("dash").parse_args(["--no-use-ema"]).use_ema is False
    with pytest.raises(SystemExit):
        parser_for("adm").parse_args(["--use_ema", "maybe"])
    with pytest.raises(ValueError, match="spelling"):
        add_dict_to_argparser(argparse.ArgumentParser(), DEFAULTS, spelling="camel")


def test_typed_dests_reads_every_form():
    parser = parser_for("dash")
    assert typed_dests(parser, ["--lr=3", "--no-use-ema", "value", "--steps", "4"]) == {"lr", "use_ema", "steps"}
    assert typed_dests(parser_for("adm"), ["--use_ema", "False"]) == {"use_ema"}


def test_merge_order_is_defaults_config_flags_json_typed(tmp_path):
    (tmp_path / "flags.json").write_text(json.dumps({"steps": 30, "schedule": "linear"}))
    parser = parser_for("dash")
    argv = ["--schedule", "sigmoid"]
    args = parser.parse_args(argv)
    done = merge_flags(parser, args, argv, config={"lr": 0.01, "steps": 20, "schedule": "legacy"},
                       beside=tmp_path / "model000010.pt")
    assert (args.lr, args.steps, args.schedule) == (0.01, 30, "sigmoid")  # config < flags.json < typed
    assert done == {"config": ["lr", "steps"], "beside": ["steps"]}
    # A training run's flags.json read by another script: only the keys asked for, the rest ignored.
    (tmp_path / "flags.json").write_text(json.dumps({"steps": 30, "schedule": "linear", "other_script_flag": 1}))
    args = parser.parse_args([])
    merge_flags(parser, args, [], beside=tmp_path / "model000010.pt", keys=["schedule"])
    assert (args.steps, args.schedule) == (10, "linear")
    with pytest.raises(ValueError, match="unknown flags other_script_flag"):  # the run's own flags: all known
        merge_flags(parser, parser.parse_args([]), [], beside=tmp_path / "model000010.pt")
    with pytest.raises(ValueError, match="unknown flags bogus"):
        merge_flags(parser, parser.parse_args([]), [], config={"bogus": 1})
    with pytest.raises(ValueError, match="--steps cannot take 2.5"):
        merge_flags(parser, parser.parse_args([]), [], config={"steps": 2.5})
    with pytest.raises(ValueError, match="true or false"):
        merge_flags(parser, parser.parse_args([]), [], config={"use_ema": "yes please"})


def test_one_config_loader_for_json_yaml_sections_and_presets(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"train": {"lr": 0.1, "num-accum": 2}, "model": {"steps": 4},
                                                 "comment": "x"}))
    assert load_config("a", tmp_path) == {"lr": 0.1, "num_accum": 2, "steps": 4}
    (tmp_path / "b.yaml").write_text("train:\n  lr: 0.2\nsteps: 5\n")
    assert load_config("b", tmp_path) == {"lr": 0.2, "steps": 5}
    (tmp_path / "c.json").write_text(json.dumps({"train": {"lr": 1}, "model": {"lr": 2}}))
    with pytest.raises(ValueError, match="twice"):
        load_config(tmp_path / "c.json")
    with pytest.raises(FileNotFoundError, match="Did you mean 'a'"):
        load_config("aa", tmp_path)
    from guided_diffusion.configs import load_preset
    assert load_preset("64x64_classifier")["classifier_depth"] == 4


def test_flags_json_reader_names_broken_files(tmp_path):
    assert read_flags_beside(tmp_path / "model.pt") is None
    (tmp_path / "flags.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_flags_beside(tmp_path / "model.pt")


def test_vdpm_checkpoint_mismatch_names_its_own_flags(tmp_path):
    flags = dict(dataset="digits", image_size=16, use_cfg=True, model_out_type="v", hid_channels=32,
                 ch_multipliers="1,2", num_res_blocks=1, apply_attn="0,0", drop_rate=0.0, num_heads=1, head_dim=-1)
    saved = model_from_flags(dict(flags, hid_channels=64, num_res_blocks=2)).state_dict()
    model = model_from_flags(flags)
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_checked(model, saved, flags=flags, flag_names=CHECKPOINT_FLAG_NAMES)
    message = str(info.value)
    assert "--hid-channels" in message and "looks like --hid-channels 64" in message
    assert "--num-res-blocks" in message and "--num_channels" not in message and "--num_res_blocks" not in message
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_checked(model, saved, flags=flags)
    assert "--num_channels" in str(info.value)  # without the family's names: ADM's


def test_load_checkpoint_selects_an_entry_and_a_prefix(tmp_path):
    sd = {"w": torch.ones(2), "b": torch.zeros(1)}
    path = tmp_path / "dit.pt"
    torch.save({"model": sd, "ema": {k: v + 1 for k, v in sd.items()}, "opt": {"state": {}},
                "args": argparse.Namespace(model="DiT-XL/2")}, path)
    assert torch.equal(load_checkpoint(path, select="ema")["w"], torch.full((2,), 2.0))
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))  # "model" by default
    torch.save({"model": sd, "ema": {"shadow": {k: v * 3 for k, v in sd.items()}, "decay": 0.9}}, tmp_path / "v.pt")
    assert torch.equal(load_checkpoint(tmp_path / "v.pt", select="ema.shadow")["w"], torch.full((2,), 3.0))
    with pytest.raises(ValueError, match="no state dict under 'ema_0.9999'.*model, ema"):
        load_checkpoint(path, select="ema_0.9999")
    torch.save({"state_dict": {"model.diffusion_model.a": torch.ones(1), "first_stage_model.b": torch.ones(1)},
                "global_step": 0}, tmp_path / "sd.ckpt")
    assert list(load_checkpoint(tmp_path / "sd.ckpt", prefix="model.diffusion_model.")) == ["a"]
    with pytest.raises(ValueError, match="no keys under 'cond_stage_model.'.*first_stage_model"):
        load_checkpoint(tmp_path / "sd.ckpt", prefix="cond_stage_model.")


def test_restricted_unpickler_builds_arrays_and_refuses_code():
    import numpy as np

    data = pickle.dumps({"data": np.arange(6, dtype=np.uint8).reshape(2, 3), "labels": [1, 2]})
    loaded = restricted_load(io.BytesIO(data))
    assert loaded["labels"] == [1, 2] and loaded["data"].sum() == 15
    with pytest.raises(ForbiddenGlobal, match="posix.system|os.system"):
        restricted_load(io.BytesIO(pickle.dumps(os.system)))
