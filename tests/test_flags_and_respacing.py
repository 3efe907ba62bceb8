"""ADM-compatible flags: parsing, factories, and the errors bad flags and respacings give."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from guided_diffusion.diffusion.schedules import get_named_beta_schedule, space_timesteps
from guided_diffusion.script_util import (
    add_dict_to_argparser,
    args_to_dict,
    classifier_and_diffusion_defaults,
    create_classifier_and_diffusion,
    create_gaussian_diffusion,
    create_model,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    sr_create_model_and_diffusion,
    sr_model_and_diffusion_defaults,
    str2bool,
)


def test_adm_defaults_and_names():
    defaults = model_and_diffusion_defaults()
    adm_keys = {
        "image_size", "num_channels", "num_res_blocks", "num_heads", "num_heads_upsample", "num_head_channels",
        "attention_resolutions", "channel_mult", "dropout", "class_cond", "use_checkpoint",
        "use_scale_shift_norm", "resblock_updown", "use_fp16", "use_new_attention_order", "learn_sigma",
        "diffusion_steps", "noise_schedule", "timestep_respacing", "use_kl", "predict_xstart",
        "rescale_timesteps", "rescale_learned_sigmas",
    }
    assert adm_keys <= set(defaults)
    assert defaults["num_heads"] == 4 and defaults["attention_resolutions"] == "16,8"
    assert defaults["use_scale_shift_norm"] is True and defaults["channel_mult"] == ""


def test_users_command_line_parses_and_builds():
    parser = argparse.ArgumentParser()
    add_dict_to_argparser(parser, dict(model_and_diffusion_defaults(), clip_denoised=True))
    args = parser.parse_args("--image_size 32 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 "
                             "--attention_resolutions 16 --learn_sigma True --use_fp16 False "
                             "--timestep_respacing ddim25 --clip_denoised no".split())
    assert args.learn_sigma is True and args.use_fp16 is False and args.clip_denoised is False
    model, diffusion = create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults()))
    assert model.out_channels == 6
    assert diffusion.num_timesteps == 25 and diffusion.timestep_map[:3] == [0, 40, 80]
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")


def test_exact_adm_flag_dict_is_accepted_on_meta():
    adm_only = {k: v for k, v in model_and_diffusion_defaults().items() if k != "num_classes"}
    with torch.device("meta"):
        model, diffusion = create_model_and_diffusion(**adm_only)
        classifier, _ = create_classifier_and_diffusion(**classifier_and_diffusion_defaults())
        sr_model, _ = sr_create_model_and_diffusion(**sr_model_and_diffusion_defaults())
    assert diffusion.num_timesteps == 1000
    assert classifier.out_channels == 1000
    assert sr_model.in_channels == 6


def test_unknown_flag_names_the_closest_one():
    with pytest.raises(ValueError, match="did you mean 'num_res_blocks'"):
        create_model_and_diffusion(num_resblocks=2)
    with pytest.raises(ValueError, match="unknown flags"):
        create_model(32, 32, 1, colour=True)


def test_image_sizes_the_unet_cannot_take():
    with pytest.raises(ValueError, match="no default channel_mult for image_size 48"):
        create_model(48, 32, 1)
    with pytest.raises(ValueError, match="cannot be halved"):
        create_model(36, 32, 1, channel_mult="1,2,2,2")
    with pytest.raises(ValueError, match="do not divide image_size"):
        create_model(32, 32, 1, channel_mult="1,2", attention_resolutions="24")


@pytest.mark.parametrize("bad", ["fast", "ddimX", "10,x", "-3"])
def test_unknown_respacing_strings(bad):
    with pytest.raises(ValueError, match="respacing"):
        space_timesteps(1000, bad)


def test_impossible_respacings():
    with pytest.raises(ValueError, match="cannot yield 11"):
        space_timesteps(10, "11")
    with pytest.raises(ValueError, match="section 1 has 4 steps"):
        space_timesteps(8, "3,5")
    with pytest.raises(ValueError, match="integer stride"):
        space_timesteps(1000, "ddim999")
    with pytest.raises(ValueError, match="noise schedule"):
        get_named_beta_schedule("quadratic", 1000)


def test_respacing_rules():
    assert sorted(space_timesteps(1000, "ddim25"))[-1] == 960
    assert sorted(space_timesteps(1000, "25"))[-1] == 999
    assert space_timesteps(1000, "ddim1000") == set(range(1000))
    assert len(space_timesteps(1000, "10,15,20")) == 45
    assert space_timesteps(100, [10]) == space_timesteps(100, "10")


def test_respaced_betas_keep_alpha_bar():
    base = create_gaussian_diffusion(steps=1000, noise_schedule="cosine")
    spaced = create_gaussian_diffusion(steps=1000, noise_schedule="cosine", timestep_respacing="ddim50")
    kept = np.array(spaced.timestep_map)
    assert np.allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12)
    assert spaced.original_num_steps == 1000


def test_loss_and_variance_types_follow_adm():
    from guided_diffusion.gaussian_diffusion import LossType, ModelMeanType, ModelVarType

    d = create_gaussian_diffusion(learn_sigma=True, rescale_learned_sigmas=True)
    assert (d.loss_type, d.model_var_type) == (LossType.RESCALED_MSE, ModelVarType.LEARNED_RANGE)
    d = create_gaussian_diffusion(use_kl=True, sigma_small=True, predict_xstart=True)
    assert (d.loss_type, d.model_var_type, d.model_mean_type) == (
        LossType.RESCALED_KL, ModelVarType.FIXED_SMALL, ModelMeanType.START_X)
