"""The demo's computations without gradio: tabs from the model's capabilities, input checks, results."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from mpma.demo.service import DemoInputError, DemoService, split_lines
from mpma.inference import Predictor


@pytest.fixture(scope="module")
def service(demo_models, tmp_path_factory) -> DemoService:
    return DemoService(Predictor.from_pretrained(demo_models["vqa"], device="cpu"), max_upload_mb=0.05,
                       workdir=tmp_path_factory.mktemp("maps"))


def test_tabs_follow_what_the_model_can_do(service, demo_models):
    assert service.tabs == ["vqa", "retrieval", "zero_shot"]
    no_align = DemoService(Predictor.from_pretrained(demo_models["vqa_no_align"], device="cpu"))
    assert no_align.tabs == ["vqa"]  # a VQA run without the GLA-global head: no retrieval, no zero-shot
    with pytest.raises(DemoInputError, match="no GLA-global alignment head"):
        no_align.zero_shot(None, "a, b")


def test_answer_gives_probabilities_and_the_word_maps(service, demo_images):
    answers, map_path, note = service.answer(str(demo_images["png0"]), "is there a nodule in the left lung?", 3)
    assert len(answers) == 3 and all(0 <= p <= 1 for p in answers.values())
    assert list(answers.values()) == sorted(answers.values(), reverse=True)
    assert "nodule" in note and Image.open(map_path).size[0] > 200  # the alignment figure, not a thumbnail


@pytest.mark.parametrize("image, question, message", [
    ("png0", "   ", "the question is empty"),
    ("fake", "is there a nodule?", "notes.png is not a readable PNG, JPEG or DICOM image"),
    ("big", "is there a nodule?", "above the demo's limit of 0.05 MB"),
    (None, "is there a nodule?", "upload the image"),
])
def test_bad_inputs_are_refused_with_a_message(service, demo_images, image, question, message):
    with pytest.raises(DemoInputError, match=message):
        service.answer(str(demo_images[image]) if image else None, question)


def test_retrieval_both_ways_and_zero_shot(service, demo_images):
    gallery = [str(demo_images[f"png{i}"]) for i in range(3)]
    rows = service.rank_images("small nodule in the right upper zone", gallery, top_k=5)
    assert [r[0] for r in rows] == [1, 2, 3] and {r[1] for r in rows} == {"chest0.png", "chest1.png", "chest2.png"}
    assert rows[0][2] >= rows[1][2] >= rows[2][2]
    rows = service.rank_texts(gallery[0], "normal chest\n\nleft effusion\nright nodule", top_k=2)
    assert len(rows) == 2 and {r[1] for r in rows} <= {"normal chest", "left effusion", "right nodule"}
    probs = service.zero_shot(gallery[0], "nodule, effusion\nnormal", "findings: {label}")
    assert set(probs) == {"nodule", "effusion", "normal"} and abs(sum(probs.values()) - 1) < 1e-5
    with pytest.raises(DemoInputError, match="must contain"):
        service.zero_shot(gallery[0], "a, b", "no placeholder")


def test_split_lines():
    assert split_lines(" a, b\n\nc ", "\n,") == ["a", "b", "c"]


def test_the_core_package_does_not_import_gradio():
    code = ("import sys, mpma.inference, mpma.cli, mpma.demo.service, mpma.demo.app; mpma.cli.build_parser(); "
            "assert 'gradio' not in sys.modules, 'gradio imported at import time'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_extra_is_one_line_naming_the_install(monkeypatch, capsys, demo_models):
    from mpma.cli import main
    from mpma.demo.app import require_gradio

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[demo\]"'):
        require_gradio()
    assert main(["demo", "--model", str(demo_models["vqa"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install -e ".[demo]"' in err
