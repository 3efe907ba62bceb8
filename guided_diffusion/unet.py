"""ADM import shim: ``from guided_diffusion.unet import UNetModel`` keeps working."""

from .models.unet import (  # noqa: F401
    EncoderUNetModel,
    SuperResModel,
    UNetModel,
    convert_module_to_f16,
    convert_module_to_f32,
)
from .models.unet_blocks import (  # noqa: F401
    AttentionBlock,
    AttentionPool2d,
    Downsample,
    QKVAttention,
    QKVAttentionLegacy,
    ResBlock,
    TimestepBlock,
    TimestepEmbedSequential,
    Upsample,
)
