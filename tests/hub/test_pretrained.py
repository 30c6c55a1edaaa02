"""save_pretrained / from_pretrained: identical outputs after a round trip, strict loading, no unpickling, model card."""

from __future__ import annotations

import json

import pytest
import torch

from mpma.models.factory import create_model
from mpma.hub import WeightsMismatchError, from_pretrained, save_pretrained
from mpma.tasks.classification import FusedClassifier, UnimodalClassifier
from mpma.tasks.retrieval import RetrievalTrainer


@pytest.fixture(scope="module")
def backbone(micro_config, tokenizer):
    from mpma.models.mpma import MPMAModel

    torch.manual_seed(0)
    return MPMAModel(micro_config(), len(tokenizer), tokenizer.pad_token_id).eval()


@pytest.fixture(scope="module")
def batch(make_batch):
    return make_batch(n=3, image_size=32)


def _fresh(backbone):
    """A copy of the backbone (task modules wrap it; each test gets its own weights)."""
    import copy

    return copy.deepcopy(backbone)


def _outputs(module, batch) -> list[torch.Tensor]:
    with torch.no_grad():
        if hasattr(module, "predict"):
            return [module.predict(batch)]
        backbone = getattr(module, "backbone", module)
        out = backbone(batch["images"], batch["input_ids"], batch["attention_mask"],
                       mlm_positions=batch["attention_mask"].bool(), generator=torch.Generator().manual_seed(3))
        return [out.vision.tokens, out.text, out.fusion.pooled, out.image_embed, out.text_embed, out.mlm_logits,
                out.mim_pred, backbone.itm_logits(out.fusion.pooled)]


def test_backbone_round_trip_gives_identical_outputs(tmp_path, backbone, tokenizer, batch):
    folder = save_pretrained(backbone, tmp_path / "backbone", tokenizer)
    for name in ("config.json", "model.safetensors", "tokenizer/tokenizer.json", "MODEL_CARD.md"):
        assert (folder / name).exists(), name
    assert not (folder / "task.json").exists()
    meta = json.loads((folder / "config.json").read_text())
    assert meta["kind"] == "backbone" and meta["preprocess"]["image_size"] == 32
    loaded = from_pretrained(folder)
    assert loaded.task is None and loaded.module is loaded.backbone and not loaded.module.training
    assert len(loaded.tokenizer) == len(tokenizer)
    for got, want in zip(_outputs(loaded.module, batch), _outputs(backbone, batch)):
        assert torch.equal(got, want)


def _task_modules(backbone):
    yield "vqa", FusedClassifier(_fresh(backbone), 5, "bce"), ["yes", "no", "left", "right", "two"], {}
    yield "mm_cls", FusedClassifier(_fresh(backbone), 3, "ce", hidden=83, pool="mean"), ["a", "b", "c"], {}
    yield "img_cls", UnimodalClassifier(_fresh(backbone), "image", 4, multi_label=True), list("wxyz"), {"multi_label": True}
    yield "txt_cls", UnimodalClassifier(_fresh(backbone), "text", 2, multi_label=False), ["entail", "contradict"], {}
    yield "retrieval", RetrievalTrainer(_fresh(backbone), use_itm=True), [], {}
    yield "zero_shot_cls", _fresh(backbone), ["nodule", "effusion"], {"prompt": "an x-ray with {label}"}


@pytest.mark.parametrize("task", ["vqa", "mm_cls", "img_cls", "txt_cls", "retrieval", "zero_shot_cls"])
def test_each_task_model_round_trip(tmp_path, backbone, tokenizer, batch, task):
    name, module, classes, extra = next(t for t in _task_modules(backbone) if t[0] == task)
    torch.manual_seed(1)
    for param in module.parameters():  # move every weight away from its initial value
        param.data.add_(0.01 * torch.randn_like(param))
    module.eval()
    folder = save_pretrained(module, tmp_path / task, tokenizer, task={"task": name, "classes": classes, **extra},
                             metrics={"test": {"accuracy": 0.5}})
    loaded = from_pretrained(folder)
    saved_task = json.loads((folder / "task.json").read_text())
    assert saved_task["classes"] == classes and loaded.task["task"] == name
    assert type(loaded.module) is type(module)
    assert getattr(loaded.module, "pool", None) == getattr(module, "pool", None)
    for got, want in zip(_outputs(loaded.module, batch), _outputs(module, batch)):
        assert torch.equal(got, want)
    if task == "zero_shot_cls":
        assert loaded.task["prompt"] == "an x-ray with {label}"
    card = (folder / "MODEL_CARD.md").read_text()
    assert f"mpma {name} model" in card and "| accuracy | 0.5000 |" in card


def test_task_module_needs_matching_classes(tmp_path, backbone, tokenizer):
    module = FusedClassifier(_fresh(backbone), 3)
    with pytest.raises(ValueError, match="3 outputs"):
        save_pretrained(module, tmp_path / "x", tokenizer, task={"task": "mm_cls", "classes": ["a"]})
    with pytest.raises(ValueError, match="needs task"):
        save_pretrained(module, tmp_path / "x", tokenizer)


@pytest.fixture()
def saved_vqa(tmp_path, backbone, tokenizer):
    module = FusedClassifier(_fresh(backbone), 2)
    return save_pretrained(module, tmp_path / "vqa", tokenizer, task={"task": "vqa", "classes": ["yes", "no"]})


def _rewrite(folder, change) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"))


def test_strict_loading_names_missing_keys(saved_vqa):
    _rewrite(saved_vqa, lambda s: [s.pop("head.net.3.weight"), s.pop("backbone.fusion.text_proj.bias")])
    with pytest.raises(WeightsMismatchError, match="2 missing keys") as error:
        from_pretrained(saved_vqa)
    assert "head.net.3.weight" in str(error.value) and "backbone.fusion.text_proj.bias" in str(error.value)


def test_strict_loading_names_unexpected_and_reshaped_keys(saved_vqa):
    def change(state):
        state["backbone.extra.weight"] = torch.zeros(3, 3)
        state["head.net.3.bias"] = torch.zeros(7)

    _rewrite(saved_vqa, change)
    with pytest.raises(WeightsMismatchError) as error:
        from_pretrained(saved_vqa)
    message = str(error.value)
    assert "1 unexpected keys: backbone.extra.weight" in message
    assert "head.net.3.bias [7] (expected [2])" in message


def test_pickled_weights_are_never_unpickled(saved_vqa):
    marker = saved_vqa / "pwned"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    torch.save({"head.net.3.weight": Payload()}, saved_vqa / "model.safetensors")  # a pickle under the safe name
    with pytest.raises(WeightsMismatchError, match="not a valid safetensors file"):
        from_pretrained(saved_vqa)
    (saved_vqa / "model.safetensors").rename(saved_vqa / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="never loaded"):
        from_pretrained(saved_vqa)
    assert not marker.exists()


def test_text_encoder_architecture_is_saved_with_the_folder(tmp_path, micro_config, tokenizer, batch):
    """A backbone whose text encoder came from text.init (another width, RoBERTa) reloads after the source is gone."""
    import shutil

    from transformers import AutoConfig, AutoModel

    source = tmp_path / "roberta"
    hf = AutoConfig.for_model("roberta", vocab_size=len(tokenizer) + 3, hidden_size=48, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=64, pad_token_id=0, max_position_embeddings=60,
                              type_vocab_size=1, layer_norm_eps=1e-7)
    torch.manual_seed(0)
    AutoModel.from_config(hf).save_pretrained(str(source))
    model = create_model(micro_config(f"text.init={source}"), len(tokenizer), tokenizer.pad_token_id).eval()
    assert model.text.width == 48
    folder = save_pretrained(model, tmp_path / "saved", tokenizer)
    shutil.rmtree(source)
    loaded = from_pretrained(folder)
    assert loaded.config.text.width == 48 and loaded.config.text.model_type == "roberta"
    assert loaded.backbone.text.encoder.config.layer_norm_eps == 1e-7
    for got, want in zip(_outputs(loaded.module, batch), _outputs(model, batch)):
        assert torch.equal(got, want)


def test_model_card_says_what_the_model_is_and_is_not_for(tmp_path, backbone, tokenizer):
    folder = save_pretrained(backbone, tmp_path / "card", tokenizer,
                             provenance={"pretrain": {"data": "synthrad", "steps": 700, "batch_size": 64, "lr": 5e-4}})
    card = (folder / "MODEL_CARD.md").read_text()
    for needle in ("## Architecture", "ViT, image 32px, patch 8", "bert encoder", "memory slots 4", "data `synthrad`, 700 steps",
                   "No evaluation results", "not for clinical decisions", "research"):
        assert needle in card, needle


def test_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"vision": {}}))
    with pytest.raises(ValueError, match="not an mpma model folder"):
        from_pretrained(tmp_path)


def test_alignment_parts_are_rebuilt_as_saved(tmp_path, micro_config, tokenizer, batch):
    """A local-only GLA head (global_align=0), then a fresh global-only one (retrieval from an M3AE-style backbone)."""
    from mpma.models.heads import AlignmentHeads
    from mpma.models.mpma import MPMAModel

    torch.manual_seed(0)
    model = MPMAModel(micro_config("objectives.global_align=0"), len(tokenizer), tokenizer.pad_token_id).eval()
    assert model.align.global_image is None and model.align.local_image is not None
    loaded = from_pretrained(save_pretrained(model, tmp_path / "local", tokenizer))
    assert loaded.backbone.align.global_image is None
    for got, want in zip(_outputs(loaded.module, batch), _outputs(model, batch)):
        assert (got is None and want is None) or torch.equal(got, want)  # no global embeddings
    model.align = AlignmentHeads(32, 32, 16, 0.07, local=False)  # what FinetuneRun adds for retrieval
    module = RetrievalTrainer(model).eval()
    loaded = from_pretrained(save_pretrained(module, tmp_path / "fresh", tokenizer, task={"task": "retrieval"}))
    assert loaded.backbone.align.local_image is None and loaded.backbone.has_global_alignment
    with torch.no_grad():
        assert torch.equal(loaded.backbone.embed_image(batch["images"]), model.embed_image(batch["images"]))
