"""The Gradio page, driven through Gradio's own Python client against a micro VQA model.

Skipped when the ``demo`` extra (gradio, gradio_client) is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

gradio = pytest.importorskip("gradio", reason='the demo extra is not installed (pip install -e ".[demo]")')
gradio_client = pytest.importorskip("gradio_client")

from PIL import Image  # noqa: E402

from mpma.demo.app import build_app, launch  # noqa: E402
from mpma.demo.service import DemoService  # noqa: E402
from mpma.inference import Predictor  # noqa: E402


@pytest.fixture(scope="module")
def served(demo_models, tmp_path_factory):
    """(app, client) of the page over the micro VQA model on 127.0.0.1, closed after the module."""
    service = DemoService(Predictor.from_pretrained(demo_models["vqa"], device="cpu"), max_upload_mb=0.05,
                          workdir=tmp_path_factory.mktemp("maps"))
    app = build_app(service)
    url = launch(app, block=False, max_upload_mb=service.max_upload_mb, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
    yield app, client
    client.close() if hasattr(client, "close") else None
    app.close()


def test_vqa_answers_and_the_word_map_come_back(served, demo_images):
    _, client = served
    label, map_file, note = client.predict(gradio_client.handle_file(str(demo_images["png0"])),
                                           "is there a nodule in the left lung?", 3, api_name="/answer")
    confidences = label["confidences"]
    assert len(confidences) == 3 and label["label"] == confidences[0]["label"]
    assert {c["label"] for c in confidences} <= {"yes", "no", "left", "right", "two"}
    assert all(0 <= c["confidence"] <= 1 for c in confidences)
    assert Path(map_file).is_file() and Image.open(map_file).size[0] > 200
    assert "nodule" in note


def test_bad_inputs_give_a_message_on_the_page(served, demo_images):
    _, client = served
    image = gradio_client.handle_file(str(demo_images["png0"]))
    with pytest.raises(gradio_client.exceptions.AppError, match="the question is empty"):
        client.predict(image, "  ", 3, api_name="/answer")
    with pytest.raises(gradio_client.exceptions.AppError, match="notes.png is not a readable PNG, JPEG or DICOM"):
        client.predict(gradio_client.handle_file(str(demo_images["fake"])), "is there a nodule?", 3, api_name="/answer")
    with pytest.raises(gradio_client.exceptions.AppError, match="above the demo's limit"):
        client.predict(gradio_client.handle_file(str(demo_images["big"])), "is there a nodule?", 3, api_name="/answer")


def test_retrieval_and_zero_shot_tabs(served, demo_images):
    _, client = served
    gallery = [gradio_client.handle_file(str(demo_images[f"png{i}"])) for i in range(3)]
    table = client.predict("small nodule in the right upper zone", gallery, 3, api_name="/rank_images")
    rows = table["data"] if isinstance(table, dict) else table
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    probs = client.predict(gallery[0], "nodule, effusion, normal", "findings: {label}", api_name="/zero_shot")
    assert {c["label"] for c in probs["confidences"]} == {"nodule", "effusion", "normal"}


def test_only_supported_tabs_are_on_the_page(demo_models):
    service = DemoService(Predictor.from_pretrained(demo_models["vqa_no_align"], device="cpu"))
    app = build_app(service)
    endpoints = {dep.get("api_name") for dep in app.config["dependencies"]}
    tabs = {c["props"].get("label") for c in app.config["components"] if c.get("type") == "tabitem"}
    assert "answer" in endpoints and not endpoints & {"rank_images", "rank_texts", "zero_shot"}
    assert tabs == {"VQA"}
