"""ADM-compatible flag dictionaries and model/diffusion factories.

Names, signatures and defaults are ADM's, so ``create_model_and_diffusion(**args_to_dict(args,
model_and_diffusion_defaults().keys()))`` works as in existing scripts. Options added here have defaults that
reproduce ADM's behaviour: ``num_classes`` (1000), ``classifier_channel_mult`` ("" = by image size),
``classifier_num_head_channels`` (64) and ``classifier_num_classes`` (1000).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import inspect
import warnings
from typing import Dict, Iterable, Sequence, Tuple

from .adm.diffusion import LossType, ModelMeanType, ModelVarType, SpacedDiffusion
from .flags import add_dict_to_argparser, str2bool  # ADM's names; the flag layer is guided_diffusion.flags
from .diffusion.schedules import get_named_beta_schedule, space_timesteps
from .models.unet import DEFAULT_CHANNEL_MULT, EncoderUNetModel, SuperResModel, UNetModel

NUM_CLASSES = 1000



def diffusion_defaults() -> dict:
    """Defaults of the flags that feed ``create_gaussian_diffusion``."""
    return dict(
        learn_sigma=False,
        diffusion_steps=1000,
        noise_schedule="linear",
        timestep_respacing="",
        use_kl=False,
        predict_xstart=False,
        rescale_timesteps=False,
        rescale_learned_sigmas=False,
    )


def classifier_defaults() -> dict:
    """Defaults of the noisy classifier's flags."""
    return dict(
        image_size=64,
        classifier_use_fp16=False,
        classifier_width=128,
        classifier_depth=2,
        classifier_attention_resolutions="32,16,8",
        classifier_use_scale_shift_norm=True,
        classifier_resblock_updown=True,
        classifier_pool="attention",
        classifier_channel_mult="",
        classifier_num_head_channels=64,
        classifier_num_classes=NUM_CLASSES,
    )


def model_and_diffusion_defaults() -> dict:
    """Defaults of the diffusion UNet's flags plus the diffusion flags."""
    res = dict(
        image_size=64,
        num_channels=128,
        num_res_blocks=2,
        num_heads=4,
        num_heads_upsample=-1,
        num_head_channels=-1,
        attention_resolutions="16,8",
        channel_mult="",
        dropout=0.0,
        class_cond=False,
        use_checkpoint=False,
        use_scale_shift_norm=True,
        resblock_updown=False,
        use_fp16=False,
        use_new_attention_order=False,
        num_classes=NUM_CLASSES,
    )
    res.update(diffusion_defaults())
    return res


def classifier_and_diffusion_defaults() -> dict:
    res = classifier_defaults()
    res.update(diffusion_defaults())
    return res


def sr_model_and_diffusion_defaults() -> dict:
    """Defaults of the super-resolution model: the UNet flags with large_size/small_size for image_size."""
    res = model_and_diffusion_defaults()
    res["large_size"] = 256
    res["small_size"] = 64
    names = inspect.signature(sr_create_model_and_diffusion).parameters
    return {k: v for k, v in res.items() if k in names}


def _checked_flags(fn):
    """Reject unknown flags with a ValueError that names them and suggests the closest known flag."""
    names = list(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, names, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"{fn.__name__} got unknown flags: {', '.join(hints)}")
        return fn(*args, **kwargs)

    return wrapper


def parse_channel_mult(channel_mult, image_size: int) -> Tuple[float, ...]:
    """"" picks the published multipliers for the image size; otherwise comma-separated numbers."""
    if isinstance(channel_mult, (tuple, list)):
        mult = tuple(channel_mult)
    elif channel_mult == "":
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(
                f"no default channel_mult for image_size {image_size} (defaults exist for "
                f"{sorted(DEFAULT_CHANNEL_MULT)}): pass --channel_mult, e.g. 1,2,2"
            )
        mult = DEFAULT_CHANNEL_MULT[image_size]
    else:
        try:
            mult = tuple(float(m) if "." in m else int(m) for m in str(channel_mult).split(","))
        except ValueError:
            raise ValueError(f"channel_mult must be comma-separated numbers, got {channel_mult!r}") from None
    factor = 2 ** (len(mult) - 1)
    if image_size % factor:
        raise ValueError(
            f"image_size {image_size} cannot be halved {len(mult) - 1} times (channel_mult {mult}): "
            f"use a multiple of {factor}, or fewer levels in channel_mult"
        )
    return mult


def parse_attention_resolutions(attention_resolutions, image_size: int, levels: int) -> Tuple[int, ...]:
    """Resolutions like "32,16,8" as downsample rates image_size // res (what the UNet takes)."""
    text = str(attention_resolutions).strip()
    if not text:
        return ()
    try:
        resolutions = [int(r) for r in text.split(",")]
    except ValueError:
        raise ValueError(
            f"attention_resolutions must be comma-separated ints, got {attention_resolutions!r}") from None
    bad = [r for r in resolutions if r <= 0 or image_size % r]
    if bad:
        raise ValueError(f"attention resolutions {bad} do not divide image_size {image_size}")
    reachable = {image_size // 2 ** level for level in range(levels)}
    unused = [r for r in resolutions if r not in reachable]
    if unused:
        warnings.warn(f"attention_resolutions {unused} are never reached by a {image_size}px UNet with "
                      f"{levels} levels (resolutions {sorted(reachable, reverse=True)}); they are ignored",
                      stacklevel=3)
    return tuple(image_size // r for r in resolutions)


@_checked_flags
def create_model_and_diffusion(image_size=64, class_cond=False, learn_sigma=False, num_channels=128,
                               num_res_blocks=2, channel_mult="", num_heads=4, num_head_channels=-1,
                               num_heads_upsample=-1, attention_resolutions="16,8", dropout=0.0,
                               diffusion_steps=1000, noise_schedule="linear", timestep_respacing="",
                               use_kl=False, predict_xstart=False, rescale_timesteps=False,
                               rescale_learned_sigmas=False, use_checkpoint=False, use_scale_shift_norm=True,
                               resblock_updown=False, use_fp16=False, use_new_attention_order=False,
                               num_classes=NUM_CLASSES):
    """Build (UNetModel, SpacedDiffusion) from ADM's flags. The model is float32: load a checkpoint first,
    then call ``model.convert_to_fp16()`` when ``use_fp16`` (as ADM's scripts do)."""
    model = create_model(
        image_size, num_channels, num_res_blocks, channel_mult=channel_mult, learn_sigma=learn_sigma,
        class_cond=class_cond, use_checkpoint=use_checkpoint, attention_resolutions=attention_resolutions,
        num_heads=num_heads, num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm, dropout=dropout, resblock_updown=resblock_updown,
        use_fp16=use_fp16, use_new_attention_order=use_new_attention_order, num_classes=num_classes,
    )
    diffusion = _diffusion_from_flags(diffusion_steps, learn_sigma, noise_schedule, use_kl, predict_xstart,
                                      rescale_timesteps, rescale_learned_sigmas, timestep_respacing)
    return model, diffusion


@_checked_flags
def create_model(image_size, num_channels, num_res_blocks, channel_mult="", learn_sigma=False, class_cond=False,
                 use_checkpoint=False, attention_resolutions="16", num_heads=1, num_head_channels=-1,
                 num_heads_upsample=-1, use_scale_shift_norm=False, dropout=0, resblock_updown=False,
                 use_fp16=False, use_new_attention_order=False, num_classes=NUM_CLASSES) -> UNetModel:
    """The ADM UNet for RGB images (6 output channels when learn_sigma)."""
    return _rgb_unet(UNetModel, image_size, parse_channel_mult(channel_mult, image_size), num_channels,
                     num_res_blocks, learn_sigma, class_cond, attention_resolutions, num_classes,
                     use_checkpoint=use_checkpoint, num_heads=num_heads, num_head_channels=num_head_channels,
                     num_heads_upsample=num_heads_upsample, use_scale_shift_norm=use_scale_shift_norm,
                     dropout=dropout, resblock_updown=resblock_updown, use_fp16=use_fp16,
                     use_new_attention_order=use_new_attention_order)


def _rgb_unet(cls, image_size, mult, num_channels, num_res_blocks, learn_sigma, class_cond,
              attention_resolutions, num_classes, **options):
    """A UNet (or SuperResModel) on RGB data from ADM's flag conventions; ``options`` pass through."""
    return cls(
        image_size=image_size,
        in_channels=3,
        model_channels=num_channels,
        out_channels=6 if learn_sigma else 3,
        num_res_blocks=num_res_blocks,
        attention_resolutions=parse_attention_resolutions(attention_resolutions, image_size, len(mult)),
        channel_mult=mult,
        num_classes=num_classes if class_cond else None,
        **options,
    )


@_checked_flags
def create_classifier_and_diffusion(image_size=64, classifier_use_fp16=False, classifier_width=128,
                                    classifier_depth=2, classifier_attention_resolutions="32,16,8",
                                    classifier_use_scale_shift_norm=True, classifier_resblock_updown=True,
                                    classifier_pool="attention", learn_sigma=False, diffusion_steps=1000,
                                    noise_schedule="linear", timestep_respacing="", use_kl=False,
                                    predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False,
                                    classifier_channel_mult="", classifier_num_head_channels=64,
                                    classifier_num_classes=NUM_CLASSES):
    """Build (EncoderUNetModel, SpacedDiffusion) from the classifier and diffusion flags."""
    classifier = create_classifier(
        image_size, classifier_use_fp16, classifier_width, classifier_depth, classifier_attention_resolutions,
        classifier_use_scale_shift_norm, classifier_resblock_updown, classifier_pool,
        classifier_channel_mult=classifier_channel_mult,
        classifier_num_head_channels=classifier_num_head_channels,
        classifier_num_classes=classifier_num_classes,
    )
    diffusion = _diffusion_from_flags(diffusion_steps, learn_sigma, noise_schedule, use_kl, predict_xstart,
                                      rescale_timesteps, rescale_learned_sigmas, timestep_respacing)
    return classifier, diffusion


@_checked_flags
def create_classifier(image_size, classifier_use_fp16, classifier_width, classifier_depth,
                      classifier_attention_resolutions, classifier_use_scale_shift_norm,
                      classifier_resblock_updown, classifier_pool, classifier_channel_mult="",
                      classifier_num_head_channels=64, classifier_num_classes=NUM_CLASSES) -> EncoderUNetModel:
    """ADM's noisy classifier (legacy attention order, attention pooling by default)."""
    mult = parse_channel_mult(classifier_channel_mult, image_size)
    return EncoderUNetModel(
        image_size=image_size,
        in_channels=3,
        model_channels=classifier_width,
        out_channels=classifier_num_classes,
        num_res_blocks=classifier_depth,
        attention_resolutions=parse_attention_resolutions(classifier_attention_resolutions, image_size, len(mult)),
        channel_mult=mult,
        use_fp16=classifier_use_fp16,
        num_head_channels=classifier_num_head_channels,
        use_scale_shift_norm=classifier_use_scale_shift_norm,
        resblock_updown=classifier_resblock_updown,
        pool=classifier_pool,
    )


@_checked_flags
def sr_create_model_and_diffusion(large_size=256, small_size=64, class_cond=False, learn_sigma=False,
                                  num_channels=128, num_res_blocks=2, num_heads=4, num_head_channels=-1,
                                  num_heads_upsample=-1, attention_resolutions="16,8", dropout=0.0,
                                  diffusion_steps=1000, noise_schedule="linear", timestep_respacing="",
                                  use_kl=False, predict_xstart=False, rescale_timesteps=False,
                                  rescale_learned_sigmas=False, use_checkpoint=False, use_scale_shift_norm=True,
                                  resblock_updown=False, use_fp16=False, num_classes=NUM_CLASSES):
    """Build (SuperResModel, SpacedDiffusion) for small_size -> large_size upsampling."""
    model = sr_create_model(
        large_size, small_size, num_channels, num_res_blocks, learn_sigma=learn_sigma, class_cond=class_cond,
        use_checkpoint=use_checkpoint, attention_resolutions=attention_resolutions, num_heads=num_heads,
        num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm, dropout=dropout, resblock_updown=resblock_updown,
        use_fp16=use_fp16, num_classes=num_classes,
    )
    diffusion = _diffusion_from_flags(diffusion_steps, learn_sigma, noise_schedule, use_kl, predict_xstart,
                                      rescale_timesteps, rescale_learned_sigmas, timestep_respacing)
    return model, diffusion


def sr_create_model(large_size, small_size, num_channels, num_res_blocks, learn_sigma, class_cond,
                    use_checkpoint, attention_resolutions, num_heads, num_head_channels, num_heads_upsample,
                    use_scale_shift_norm, dropout, resblock_updown, use_fp16, num_classes=NUM_CLASSES
                    ) -> SuperResModel:
    del small_size  # the low-resolution input is upsampled to large_size inside the model
    sr_mult = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}
    if large_size not in sr_mult:
        raise ValueError(f"no super-resolution channel_mult for large_size {large_size} "
                         f"(supported: {sorted(sr_mult)})")
    return _rgb_unet(SuperResModel, large_size, sr_mult[large_size], num_channels, num_res_blocks, learn_sigma,
                     class_cond, attention_resolutions, num_classes, use_checkpoint=use_checkpoint,
                     num_heads=num_heads, num_head_channels=num_head_channels,
                     num_heads_upsample=num_heads_upsample, use_scale_shift_norm=use_scale_shift_norm,
                     dropout=dropout, resblock_updown=resblock_updown, use_fp16=use_fp16)


def _diffusion_from_flags(diffusion_steps, learn_sigma, noise_schedule, use_kl, predict_xstart, rescale_timesteps,
                          rescale_learned_sigmas, timestep_respacing) -> SpacedDiffusion:
    return create_gaussian_diffusion(
        steps=diffusion_steps, learn_sigma=learn_sigma, noise_schedule=noise_schedule, use_kl=use_kl,
        predict_xstart=predict_xstart, rescale_timesteps=rescale_timesteps,
        rescale_learned_sigmas=rescale_learned_sigmas, timestep_respacing=timestep_respacing,
    )


def create_gaussian_diffusion(*, steps=1000, learn_sigma=False, sigma_small=False, noise_schedule="linear",
                              use_kl=False, predict_xstart=False, rescale_timesteps=False,
                              rescale_learned_sigmas=False, timestep_respacing="") -> SpacedDiffusion:
    """The diffusion for the flags; always a SpacedDiffusion ("" respacing keeps every step)."""
    betas = get_named_beta_schedule(noise_schedule, steps)
    if use_kl:
        loss_type = LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = LossType.RESCALED_MSE
    else:
        loss_type = LossType.MSE
    if learn_sigma:
        var_type = ModelVarType.LEARNED_RANGE
    else:
        var_type = ModelVarType.FIXED_SMALL if sigma_small else ModelVarType.FIXED_LARGE
    return SpacedDiffusion(
        use_timesteps=space_timesteps(steps, timestep_respacing or [steps]),
        betas=betas,
        model_mean_type=ModelMeanType.START_X if predict_xstart else ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
    )


def args_to_dict(args: argparse.Namespace, keys: Iterable[str]) -> Dict:
    return {k: getattr(args, k) for k in keys}


def flags_for(fn, flags: Dict) -> Dict:
    """The subset of ``flags`` that ``fn`` accepts (to pass a saved flag dict to one factory)."""
    names = inspect.signature(fn).parameters
    return {k: v for k, v in flags.items() if k in names}


__all__: Sequence[str] = [
    "NUM_CLASSES", "diffusion_defaults", "classifier_defaults", "model_and_diffusion_defaults",
    "classifier_and_diffusion_defaults", "sr_model_and_diffusion_defaults", "create_model_and_diffusion",
    "create_model", "create_classifier_and_diffusion", "create_classifier", "sr_create_model_and_diffusion",
    "sr_create_model", "create_gaussian_diffusion", "add_dict_to_argparser", "args_to_dict", "str2bool",
    "flags_for",
]
