"""Key maps from CLIP vision towers (Hugging Face, OpenAI/open_clip) onto mpma's ViT keys.

A map sends each target key of :class:`mpma.models.vision.VisionTransformer` to the source key(s)
it is built from; a source name ``KEY:q`` / ``KEY:kv`` is the query / packed key-value part of
OpenAI's packed ``in_proj`` tensor (:func:`fetch_source_tensor` reads it). Used by
:mod:`mpma.models.convert`.
"""

from __future__ import annotations

import re

import torch

# Source keys that carry no weights of the vision encoder and are dropped without complaint.
IGNORED_KEYS = {"hf-clip": ("embeddings.position_ids",), "openai-clip": ("proj", "attn_pool"), "mpma": ()}


def hf_key_map(depth: int) -> dict[str, list[str]]:
    """Target key -> source keys for a Hugging Face ``CLIPVisionModel`` of ``depth`` blocks."""
    mapping = {"cls_token": ["embeddings.class_embedding"], "patch_embed.weight": ["embeddings.patch_embedding.weight"],
               "pos_embed": ["embeddings.position_embedding.weight"]}
    for part in ("weight", "bias"):
        mapping[f"norm_pre.{part}"] = [f"pre_layrnorm.{part}"]
        mapping[f"norm.{part}"] = [f"post_layernorm.{part}"]
        for i in range(depth):
            src, dst = f"encoder.layers.{i}.", f"blocks.{i}."
            mapping[dst + f"norm1.{part}"] = [src + f"layer_norm1.{part}"]
            mapping[dst + f"norm2.{part}"] = [src + f"layer_norm2.{part}"]
            mapping[dst + f"attn.q.{part}"] = [src + f"self_attn.q_proj.{part}"]
            mapping[dst + f"attn.kv.{part}"] = [src + f"self_attn.k_proj.{part}", src + f"self_attn.v_proj.{part}"]
            mapping[dst + f"attn.proj.{part}"] = [src + f"self_attn.out_proj.{part}"]
            mapping[dst + f"mlp.fc1.{part}"] = [src + f"mlp.fc1.{part}"]
            mapping[dst + f"mlp.fc2.{part}"] = [src + f"mlp.fc2.{part}"]
    return mapping


def openai_key_map(depth: int) -> dict[str, list[str]]:
    """Target key -> source keys for an OpenAI CLIP / open_clip visual tower of ``depth`` blocks."""
    mapping = {"cls_token": ["class_embedding"], "patch_embed.weight": ["conv1.weight"], "pos_embed": ["positional_embedding"]}
    for part in ("weight", "bias"):
        mapping[f"norm_pre.{part}"] = [f"ln_pre.{part}"]
        mapping[f"norm.{part}"] = [f"ln_post.{part}"]
        for i in range(depth):
            src, dst = f"transformer.resblocks.{i}.", f"blocks.{i}."
            mapping[dst + f"norm1.{part}"] = [src + f"ln_1.{part}"]
            mapping[dst + f"norm2.{part}"] = [src + f"ln_2.{part}"]
            # in_proj packs [q; k; v] along dim 0; mpma's Attention has q and a packed [k; v].
            mapping[dst + f"attn.q.{part}"] = [src + f"attn.in_proj_{part}:q"]
            mapping[dst + f"attn.kv.{part}"] = [src + f"attn.in_proj_{part}:kv"]
            mapping[dst + f"attn.proj.{part}"] = [src + f"attn.out_proj.{part}"]
            mapping[dst + f"mlp.fc1.{part}"] = [src + f"mlp.c_fc.{part}"]
            mapping[dst + f"mlp.fc2.{part}"] = [src + f"mlp.c_proj.{part}"]
    return mapping


def target_key_map(fmt: str, target: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Target key -> source keys for a source of format ``fmt`` (``detect_format``): an mpma source
    maps every key of ``target`` to itself; a CLIP map covers as many blocks as ``target`` has."""
    if fmt == "mpma":
        return {key: [key] for key in target}
    depth = 1 + max((int(m.group(1)) for k in target if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    return (hf_key_map if fmt == "hf-clip" else openai_key_map)(depth)


def fetch_source_tensor(sub: dict[str, torch.Tensor], name: str) -> torch.Tensor | None:
    """The source tensor a map entry names, or None when ``sub`` lacks it.

    ``KEY:q`` is the first third of ``sub[KEY]`` along dim 0 (shape [W, ...] of a packed [3W, ...]),
    ``KEY:kv`` the last two thirds ([2W, ...]); a plain ``KEY`` is ``sub[KEY]`` as stored.
    """
    key, _, part = name.partition(":")
    tensor = sub.get(key)
    if tensor is None or not part:
        return tensor
    width = tensor.shape[0] // 3
    return tensor[:width] if part == "q" else tensor[width:]
