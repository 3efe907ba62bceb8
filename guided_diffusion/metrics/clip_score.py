"""CLIP score of images against their prompts, with open_clip weights read from a local file.

Reported as 100 * max(cos, 0) averaged over pairs (torchmetrics' CLIPScore convention), beside the raw
mean cosine; Hessel et al.'s CLIPScore is 2.5 * max(cos, 0), i.e. the first number times 0.025.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def load_open_clip(model_name: str, weights: str, device=None):
    """(model, tokenizer) for an open_clip architecture name (e.g. "ViT-B-32") and a local checkpoint file.

    Nothing is downloaded: ``weights`` must be a file (an open_clip or OpenAI CLIP state dict).
    """
    import open_clip
    if model_name.startswith("hf-hub:"):
        raise ValueError("hf-hub: models are fetched from the network; pass an architecture name such as "
                         "ViT-B-32 and a local weights file")
    if not weights or not os.path.isfile(weights):
        raise FileNotFoundError(f"CLIP weights {weights!r} not found; pass the local checkpoint file of the "
                                f"open_clip model {model_name} (e.g. open_clip_pytorch_model.bin)")
    model = open_clip.create_model(model_name, pretrained=None, device="cpu")
    open_clip.load_checkpoint(model, weights, weights_only=True)
    model = model.to(device or "cpu").eval()
    return model, open_clip.get_tokenizer(model_name)


def _preprocess(model, images_uint8_nhwc: np.ndarray, device) -> torch.Tensor:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), device=device).view(1, 3, 1, 1)
    x = torch.from_numpy(np.ascontiguousarray(images_uint8_nhwc)).to(device).permute(0, 3, 1, 2).float() / 255
    h, w = x.shape[-2:]
    scale = size / min(h, w)  # shorter side to the model's size, then a centre crop (CLIP's transform)
    x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bicubic",
                      align_corners=False, antialias=True).clamp(0, 1)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return (x[..., top:top + size, left:left + size] - mean) / std


@torch.no_grad()
def clip_score(model, tokenizer, images_uint8_nhwc: np.ndarray, texts: Sequence[str], *,
               batch_size: int = 64, device: Optional[torch.device] = None) -> Dict[str, object]:
    """Cosine similarity of each image with its text; ``{"clip_score", "mean_cosine", "cosines"}``."""
    if len(images_uint8_nhwc) != len(texts):
        raise ValueError(f"{len(images_uint8_nhwc)} images but {len(texts)} texts; pass one text per image")
    device = device or next(model.parameters()).device
    cos: List[torch.Tensor] = []
    for i in range(0, len(texts), batch_size):
        img = model.encode_image(_preprocess(model, images_uint8_nhwc[i:i + batch_size], device))
        txt = model.encode_text(tokenizer(list(texts[i:i + batch_size])).to(device))
        cos.append(F.cosine_similarity(img.float(), txt.float(), dim=-1).cpu())
    cosines = torch.cat(cos).double()
    return {"clip_score": float(100 * cosines.clamp(min=0).mean()), "mean_cosine": float(cosines.mean()),
            "cosines": cosines.numpy()}


__all__ = ["load_open_clip", "clip_score"]
