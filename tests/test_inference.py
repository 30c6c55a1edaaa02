"""The inference API on micro models: shapes, normalisation, batching, image inputs, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mpma.data.image import ImageError, image_to_array
from mpma.hub import save_pretrained
from mpma.inference import Predictor
from mpma.tasks.classification import FusedClassifier, UnimodalClassifier

ANSWERS = ["yes", "no", "left", "right", "two"]
LABELS = ["nodule", "effusion", "normal"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, micro_config, tokenizer):
    """Saved micro models: backbone (zero-shot labels), vqa, img_cls (multi-label), txt_cls, mm_cls."""
    import copy

    from mpma.models.mpma import MPMAModel

    torch.manual_seed(0)
    backbone = MPMAModel(micro_config(), len(tokenizer), tokenizer.pad_token_id).eval()
    root = tmp_path_factory.mktemp("models")
    folders = {
        "zero_shot": save_pretrained(backbone, root / "zs", tokenizer,
                                     task={"task": "zero_shot_cls", "classes": LABELS, "prompt": "findings: {label}"}),
        "vqa": save_pretrained(FusedClassifier(copy.deepcopy(backbone), len(ANSWERS), "ce"), root / "vqa", tokenizer,
                               task={"task": "vqa", "classes": ANSWERS}),
        "img_cls": save_pretrained(UnimodalClassifier(copy.deepcopy(backbone), "image", 3, True), root / "img", tokenizer,
                                   task={"task": "img_cls", "classes": LABELS, "multi_label": True}),
        "txt_cls": save_pretrained(UnimodalClassifier(copy.deepcopy(backbone), "text", 2, False), root / "txt", tokenizer,
                                   task={"task": "txt_cls", "classes": ["a", "b"]}),
        "mm_cls": save_pretrained(FusedClassifier(copy.deepcopy(backbone), 3), root / "mm", tokenizer,
                                  task={"task": "mm_cls", "classes": LABELS}),
    }
    return {name: Predictor.from_pretrained(path, batch_size=2) for name, path in folders.items()}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, object]:
    """One 40x40 grayscale image as array, PNG, 16-bit PNG, DICOM, JPEG and PIL; plus other images."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (40, 40)).astype(np.uint8)
    gray[0, 0], gray[0, 1] = 0, 255  # full range: min-max mapping (16-bit PNG, DICOM) is the identity
    Image.fromarray(gray).save(root / "x.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(root / "x16.png")
    Image.fromarray(gray).save(root / "x.jpg", quality=95)
    _write_dicom(root / "x.dcm", gray)
    others = [rng.integers(0, 256, (40, 40, 3)).astype(np.uint8) for _ in range(4)]
    return {"array": gray, "png": root / "x.png", "png16": str(root / "x16.png"), "dcm": root / "x.dcm",
            "jpg": root / "x.jpg", "pil": Image.open(root / "x.png"), "others": others, "root": root}


def _write_dicom(path: Path, pixels: np.ndarray) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (pixels.astype("<u2") * 16).tobytes()
    ds.save_as(path, enforce_file_format=True)


# ----------------------------------------------------------------------------- embeddings


def test_embeddings_have_the_alignment_shape_and_unit_norm(models, images):
    predictor = models["zero_shot"]
    assert predictor.device.type == ("cuda" if torch.cuda.is_available() else "cpu")  # "auto"
    image_embed = predictor.embed_image(images["others"])
    text_embed = predictor.embed_text(["a nodule", "the heart is normal in size", "effusion"])
    assert image_embed.shape == (4, 16) and text_embed.shape == (3, 16)
    torch.testing.assert_close(image_embed.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(text_embed.norm(dim=-1), torch.ones(3))
    assert predictor.embed_image(images["array"]).shape == (1, 16)


def test_batch_equals_one_by_one(models, images):
    predictor = models["vqa"]  # batch_size=2: five inputs are three batches
    batch = predictor.embed_image(images["others"] + [images["array"]])
    single = torch.cat([predictor.embed_image(x) for x in images["others"] + [images["array"]]])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=0)
    texts = ["a", "a much longer report with several words than the others", "left pleural effusion", "two", "normal"]
    torch.testing.assert_close(predictor.embed_text(texts), torch.cat([predictor.embed_text(t) for t in texts]),
                               atol=1e-5, rtol=0)
    questions = ["is there a nodule?", "which side is the effusion on in this image?", "how many?"]
    together = predictor.answer(images["others"][:3], questions, top_k=5)
    apart = [predictor.answer(img, q, top_k=5) for img, q in zip(images["others"][:3], questions)]
    for a, b in zip(together, apart):
        assert [x["answer"] for x in a] == [x["answer"] for x in b]
        np.testing.assert_allclose([x["probability"] for x in a], [x["probability"] for x in b], atol=1e-5)


def test_png_jpeg_dicom_pil_and_arrays_are_accepted(models, images):
    predictor = models["zero_shot"]
    reference = predictor.embed_image(images["array"])
    for kind in ("png", "png16", "dcm", "pil"):
        torch.testing.assert_close(predictor.embed_image(images[kind]), reference, atol=1e-6, rtol=0, msg=kind)
    as_float = images["array"].astype(np.float32) / 255.0
    channels_first = np.repeat(images["array"][None], 3, axis=0)
    for array in (as_float, channels_first, torch.from_numpy(channels_first)):
        torch.testing.assert_close(predictor.embed_image(array), reference, atol=1e-5, rtol=0)
    jpeg = predictor.embed_image(images["jpg"])  # lossy: same shape, close, not equal
    assert jpeg.shape == reference.shape and float((jpeg - reference).abs().max()) < 0.5
    assert image_to_array(images["dcm"]).dtype == np.uint8


def test_unreadable_image_is_a_clear_error(models, images):
    broken = images["root"] / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    predictor = models["zero_shot"]
    with pytest.raises(ImageError, match=r"broken\.png: cannot decode image"):
        predictor.embed_image(broken)
    with pytest.raises(ImageError, match="missing.dcm: image file not found"):
        predictor.embed_image([images["array"], str(images["root"] / "missing.dcm")])
    with pytest.raises(TypeError, match="unsupported image type"):
        predictor.embed_image(12)
    with pytest.raises(ValueError, match="unsupported image array shape"):
        predictor.embed_image(np.zeros((2, 3, 4, 5), dtype=np.uint8))


# ----------------------------------------------------------------------------- retrieval and zero-shot


def test_retrieve_both_directions(models, images):
    predictor = models["zero_shot"]
    paths = [images["png"], images["jpg"], images["png16"]]
    ranking = predictor.retrieve("a nodule in the left lung", paths, top_k=2)
    assert [r["rank"] for r in ranking] == [1, 2] and ranking[0]["score"] >= ranking[1]["score"]
    expected = (predictor.embed_text("a nodule in the left lung") @ predictor.embed_image(paths).t())[0]
    assert ranking[0]["index"] == int(expected.argmax()) and ranking[0]["candidate"] == str(paths[ranking[0]["index"]])
    assert abs(ranking[0]["score"] - float(expected.max())) < 1e-5
    texts = ["normal chest", "large effusion", "a nodule"]
    by_image = predictor.retrieve(str(images["png"]), texts, top_k=5)  # an existing path: image -> text
    assert len(by_image) == 3 and {r["candidate"] for r in by_image} == set(texts)
    scores = [r["score"] for r in by_image]
    assert scores == sorted(scores, reverse=True)


def test_zero_shot_probabilities(models, images):
    predictor = models["zero_shot"]
    probs = predictor.zero_shot(images["array"])  # labels and prompt saved with the model
    assert list(probs) and set(probs) == set(LABELS)
    assert abs(sum(probs.values()) - 1) < 1e-5 and list(probs.values()) == sorted(probs.values(), reverse=True)
    many = predictor.zero_shot(images["others"][:3], ["a", "b"], template="x-ray of {label}")
    assert len(many) == 3 and all(set(p) == {"a", "b"} for p in many)
    with pytest.raises(ValueError, match="{label}"):
        predictor.zero_shot(images["array"], ["a"], template="no placeholder")


# ----------------------------------------------------------------------------- task heads


def test_answer_top_k_with_probabilities(models, images):
    predictor = models["vqa"]
    answers = predictor.answer(images["png"], "is there a nodule?", top_k=3)
    assert len(answers) == 3 and {a["answer"] for a in answers} <= set(ANSWERS)
    probabilities = [a["probability"] for a in answers]
    assert probabilities == sorted(probabilities, reverse=True) and all(0 <= p <= 1 for p in probabilities)
    full = predictor.answer(images["png"], "is there a nodule?", top_k=10)
    assert len(full) == len(ANSWERS) and abs(sum(a["probability"] for a in full) - 1) < 1e-5  # CE head: softmax
    several = predictor.answer(images["png"], ["is there a nodule?", "which side?"], top_k=1)
    assert len(several) == 2 and len(several[0]) == 1
    with pytest.raises(ValueError, match="needs a model fine-tuned for vqa"):
        models["zero_shot"].answer(images["png"], "is there a nodule?")


def test_classify_each_head(models, images):
    multi = models["img_cls"].classify(images["dcm"])
    assert set(multi) == set(LABELS) and all(0 <= p <= 1 for p in multi.values())  # independent sigmoids
    assert len(models["img_cls"].classify(image=images["others"][:2])) == 2
    text = models["txt_cls"].classify(text="there is an effusion")
    assert set(text) == {"a", "b"} and abs(sum(text.values()) - 1) < 1e-5
    both = models["mm_cls"].classify(images["png"], "left lower lobe opacity")
    assert set(both) == set(LABELS)
    with pytest.raises(ValueError, match="needs a text"):
        models["mm_cls"].classify(images["png"])
    with pytest.raises(ValueError, match="img_cls, txt_cls or mm_cls"):
        models["vqa"].classify(images["png"], "x")
