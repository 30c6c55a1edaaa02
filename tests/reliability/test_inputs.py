"""Bad inputs are clear errors, never tracebacks (issue 13, item 4): ``top_k`` < 1, empty or whitespace
questions and texts (API and CLI), and ``mpma convert --text`` on a folder of pickled BERT weights.
A ``top_k`` above the number of answers or candidates returns them all (documented, not an error)."""

from __future__ import annotations

import copy

import pytest

from mpma.cli import main
from mpma.hub import save_pretrained
from mpma.inference import Predictor
from mpma.tasks.classification import UnimodalClassifier
from tests.reliability.micro_folders import ANSWERS, micro_backbone, save_micro_models, trap_folder, write_image


@pytest.fixture(scope="module")
def folders(tmp_path_factory, micro_config, tokenizer):
    root = tmp_path_factory.mktemp("input-models")
    saved = save_micro_models(root, micro_config, tokenizer)
    text_head = UnimodalClassifier(copy.deepcopy(micro_backbone(micro_config, tokenizer)), "text", 2, False)
    saved["txt_cls"] = save_pretrained(text_head, root / "txt", tokenizer, task={"task": "txt_cls", "classes": ["a", "b"]})
    return saved


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return write_image(tmp_path_factory.mktemp("input-images") / "x.png")


@pytest.fixture(scope="module")
def vqa(folders):
    return Predictor.from_pretrained(folders["vqa"], device="cpu")


@pytest.mark.parametrize("top_k", [-1, 0, 2.5, "3", True, None])
def test_answer_refuses_a_top_k_that_is_not_a_positive_integer(vqa, image, top_k):
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        vqa.answer(image, "is there a nodule?", top_k=top_k)


def test_a_top_k_above_the_number_of_answers_returns_them_all(vqa, image):
    answers = vqa.answer(image, "is there a nodule?", top_k=100)
    assert sorted(a["answer"] for a in answers) == sorted(ANSWERS)
    probabilities = [a["probability"] for a in answers]
    assert probabilities == sorted(probabilities, reverse=True)


@pytest.mark.parametrize("question", ["", "   ", "\t\n"])
def test_answer_refuses_an_empty_question(vqa, image, question):
    with pytest.raises(ValueError, match="the question is empty"):
        vqa.answer(image, question)
    with pytest.raises(ValueError, match="question 1 is empty"):
        vqa.answer([image, image], ["is there a nodule?", question])


def test_classify_refuses_an_empty_text(folders):
    predictor = Predictor.from_pretrained(folders["txt_cls"], device="cpu")
    with pytest.raises(ValueError, match="the text is empty"):
        predictor.classify(text="  ")
    with pytest.raises(ValueError, match="the text pair is empty"):
        predictor.classify(text=["a finding"], text_pair=[""])


def test_retrieval_refuses_a_bad_top_k_and_empty_texts(folders, image):
    predictor = Predictor.from_pretrained(folders["backbone"], device="cpu")
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        predictor.retrieve("a nodule", [image], top_k=0)
    with pytest.raises(ValueError, match="the text is empty"):
        predictor.retrieve(" ", [image])
    with pytest.raises(ValueError, match="text 1 is empty"):
        predictor.retrieve(image, ["a nodule", ""], direction="i2t")
    assert len(predictor.retrieve("a nodule", [image, image], top_k=10)) == 2  # all the candidates


@pytest.mark.parametrize("value", ["-1", "0", "two"])
def test_predict_top_k_is_checked_by_the_parser(folders, image, value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict", "vqa", "--model", str(folders["vqa"]), "--image", str(image), "--question", "is it?",
              "--top-k", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--top-k: expected a positive integer" in err and "Traceback" not in err


def test_predict_refuses_a_whitespace_question(folders, image, capsys):
    assert main(["predict", "vqa", "--model", str(folders["vqa"]), "--image", str(image), "--question", "   "]) == 2
    err = capsys.readouterr().err
    assert "error: the question is empty" in err and "Traceback" not in err


def test_convert_refuses_a_text_folder_of_pickled_weights(tmp_path, tokenizer_dir, capsys):
    marker = tmp_path / "unpickled"
    trap = trap_folder(tmp_path / "pubmedbert", marker)
    assert main(["convert", "--config", "tiny", "--text", str(trap), "--tokenizer", str(tokenizer_dir),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--text {trap.resolve()}: its weights are pickled (pytorch_model.bin)" in err
    assert "pickled weights are never loaded" in err and "model.safetensors" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "out").exists()
