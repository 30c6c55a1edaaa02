"""Downstream fine-tuning: label fractions, every task end to end through the CLI, save/load, re-ranking cost."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mpma.cli import main
from mpma.tasks.data import held_out_split, label_fraction

MICRO_RUN_SETTINGS = """data: {batch_size: 8, train_size: 64}
optim: {steps: 3, warmup_steps: 1}
run: {log_every: 1, checkpoint_every: 3, eval_size: 32}
"""
SMALL_DATA = ["data.train_size=24", "data.val_size=8", "data.test_size=12", "data.batch_size=8", "epochs=1"]


@pytest.fixture(scope="module")
def micro_preset(tmp_path_factory, micro_preset_text) -> Path:
    path = tmp_path_factory.mktemp("preset") / "micro.yaml"
    path.write_text(micro_preset_text + MICRO_RUN_SETTINGS)
    return path


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, micro_preset) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert main(["pretrain", "--config", str(micro_preset), "--out", str(out), "--no-progress"]) == 0
    return out


# ----------------------------------------------------------------------------- label fractions


def _examples(n_per_label: dict[tuple, int]) -> list[dict]:
    return [{"id": f"{labels}-{i}", "labels": labels} for labels, n in n_per_label.items() for i in range(n)]


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_label_fraction_sizes_and_stratification(fraction):
    counts = {("a",): 200, ("b",): 50, ("a", "c"): 30, ("d",): 1}
    subset = label_fraction(_examples(counts), fraction, seed=3)
    got = Counter(e["labels"] for e in subset)
    for labels, n in counts.items():
        expected = n if fraction == 1 else max(1, -(-int(fraction * n * 1000) // 1000))
        assert got[labels] == pytest.approx(expected, abs=1), labels  # ceil(fraction * n), at least one
        assert got[labels] >= 1  # every stratum, even a single-example one, survives


def test_label_fraction_is_deterministic_and_seeded():
    examples = _examples({("a",): 100, ("b",): 100})
    first = [e["id"] for e in label_fraction(examples, 0.1, seed=0)]
    assert first == [e["id"] for e in label_fraction(examples, 0.1, seed=0)]
    assert first != [e["id"] for e in label_fraction(examples, 0.1, seed=1)]


def test_label_fraction_rejects_bad_fraction():
    with pytest.raises(ValueError, match="data.fraction"):
        label_fraction(_examples({("a",): 3}), 0.0, seed=0)


def test_held_out_split_keeps_groups_together():
    examples = [{"group": g, "i": i} for g in range(20) for i in range(3)]
    train, val = held_out_split(examples, 0.2, seed=0, group_key="group")
    assert len(train) + len(val) == len(examples)
    assert not {e["group"] for e in train} & {e["group"] for e in val}
    assert len({e["group"] for e in val}) == 4


# ----------------------------------------------------------------------------- every task end to end


def _same(a, b) -> bool:
    """Nested equality of metric dicts, NaN equal to NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    return a == b


@pytest.mark.slow
@pytest.mark.parametrize("task", ["vqa", "mm_cls", "retrieval", "img_cls", "txt_cls"])
def test_finetune_each_task_from_scratch_writes_metrics_and_reloads(tmp_path, micro_preset, task):
    out = tmp_path / task
    assert main(["finetune", task, "--out", str(out), "--no-progress", f"preset={micro_preset}", *SMALL_DATA]) == 0
    for name in ("config.json", "backbone.json", "task.json", "log.jsonl", "metrics.json", "metrics.md", "best/model.safetensors"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    epochs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if "epoch" in line]
    assert len(epochs) == 1 and "val" in epochs[0]
    task_meta = json.loads((out / "task.json").read_text())
    saved = json.loads((out / "config.json").read_text())
    if task == "vqa":  # the run records the recipe it trained with
        assert {f"{s}.{k}": saved[s][k] for s, k in (key.split(".") for key in VQA_RECIPE)} == VQA_RECIPE
    if task != "retrieval":
        assert task_meta["classes"], "the answer vocabulary / label names are saved with the head"
    # the saved head, vocabulary and tokenizer reproduce the test metrics exactly
    from mpma.pipelines.finetuning import evaluate_run

    again = evaluate_run(out, "test")
    assert again.pop("test_set") == metrics["test_set"]  # the same test-set identity as at the end of training
    assert _same(json.loads(json.dumps(again, default=float)), metrics["test"])


@pytest.mark.slow
def test_finetune_from_pretrained_run_and_zero_shot(tmp_path, pretrained_run):
    out = tmp_path / "vqa"
    assert main(["finetune", "vqa", "--init", str(pretrained_run), "--out", str(out), "--no-progress", *SMALL_DATA]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"overall", "open", "closed", "out_of_vocab"}
    assert metrics["answer_vocab"] == "train"
    zero = tmp_path / "zs"
    assert main(["finetune", "zero_shot_cls", "--init", str(pretrained_run), "--out", str(zero), "--no-progress",
                 "data.test_size=12"]) == 0
    assert 0 <= json.loads((zero / "metrics.json").read_text())["test"]["macro_auc"] <= 1


@pytest.mark.slow
def test_vqa_with_the_answer_slot_trains_reloads_and_answers(tmp_path, micro_preset):
    """head.pool=slot end to end: the collate step puts a [MASK] slot after each question, the saved model
    reproduces its test metrics, and the Predictor inserts the same slot when it answers."""
    from mpma.data.text import encode_with_answer_slot
    from mpma.inference import Predictor
    from mpma.pipelines.finetuning import evaluate_run

    out = tmp_path / "vqa"
    # M3AE's soft-score BCE here (the default is cross-entropy): the Predictor's sigmoid path is checked below,
    # its softmax path in tests/test_inference.py
    assert main(["finetune", "vqa", "--out", str(out), "--no-progress", f"preset={micro_preset}", *SMALL_DATA,
                 "head.pool=slot", "head.vqa_loss=bce"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    again = evaluate_run(out, "test")
    again.pop("test_set")
    assert _same(json.loads(json.dumps(again, default=float)), metrics["test"])
    predictor = Predictor.from_pretrained(out, device="cpu")
    assert predictor.module.pool == "slot"  # saved with the head
    image = np.random.default_rng(0).integers(0, 256, (32, 32)).astype(np.uint8)
    answers = predictor.answer([image, image], ["is there a nodule?", "which side is the nodule on?"], top_k=2)
    batch = encode_with_answer_slot(predictor.tokenizer, ["is there a nodule?", "which side is the nodule on?"],
                                    predictor.max_length)
    batch["images"] = predictor.preprocess([image, image])
    expected = predictor.module.predict(batch).sigmoid()  # a soft-score BCE head: independent sigmoids
    for row, ranked in enumerate(answers):
        best = int(expected[row].argmax())
        assert ranked[0]["answer"] == predictor.classes[best]
        assert ranked[0]["probability"] == pytest.approx(float(expected[row, best]), abs=1e-6)


def test_finetune_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["finetune", "vqa", "--init", str(tmp_path), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "expected 'scratch', a pre-training run folder" in capsys.readouterr().err


def test_vqa_answer_vocabulary_conventions():
    from mpma.tasks.data import TaskData
    from mpma.tasks.vqa import answer_vocabulary

    data = TaskData({"train": [{"answer": "Yes"}], "val": [{"answer": "left "}], "test": [{"answer": "Right."}]})
    assert answer_vocabulary(data, "train") == ["left", "yes"]
    assert answer_vocabulary(data, "all_splits") == ["left", "right", "yes"]
    with pytest.raises(ValueError, match="answer_vocab"):
        answer_vocabulary(data, "test")


# ----------------------------------------------------------------------------- retrieval cost


@pytest.mark.parametrize("lr, keep", [("0.0", "best_val"), ("3e-3", "best_val"), ("0.0", "last")])
def test_retrieval_from_a_pretrained_run_scores_the_zero_shot_weights_as_epoch_0(tmp_path, pretrained_run, lr, keep):
    out = tmp_path / "retrieval"
    assert main(["finetune", "retrieval", "--init", str(pretrained_run), "--out", str(out), "--no-progress",
                 *SMALL_DATA, "epochs=2", f"optim.lr={lr}", f"keep={keep}"]) == 0
    val_lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"val"' in line]
    assert [line["epoch"] for line in val_lines] == [0, 1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    best_epoch = metrics["best_epoch"]
    means = [(v["val"]["i2t"]["R@1"] + v["val"]["t2i"]["R@1"]) / 2 for v in val_lines]
    assert metrics["keep"] == keep
    if keep == "last":  # the final epoch, even though epoch 0 ties with it on validation
        assert best_epoch == 2 and metrics["val_selection"] == means[2]
    elif lr == "0.0":  # weights never move: every epoch ties with the zero-shot weights, which are kept
        assert best_epoch == 0 and len(set(means)) == 1
    else:  # the kept epoch is the first with the best validation score
        assert best_epoch == means.index(max(means))
    scratch = tmp_path / "scratch"
    assert main(["finetune", "retrieval", "--init", "scratch", "--out", str(scratch), "--no-progress", *SMALL_DATA,
                 f"preset={pretrained_run / 'config.json'}"]) == 0
    assert '"epoch": 0' not in (scratch / "log.jsonl").read_text()  # a random head is no zero-shot model


@pytest.mark.slow
def test_retrieval_rerank_fuses_only_top_k_pairs(pretrained_run):
    from mpma.config import load_config
    from mpma.eval.downstream import FusionCallCounter, evaluate_retrieval
    from mpma.config import FinetuneConfig
    from mpma.pipelines.finetuning import FinetuneRun

    config = load_config(None, ["task=retrieval", f"init={pretrained_run}", "epochs=0", "data.test_size=20"], cls=FinetuneConfig)
    run = FinetuneRun(config, torch.device("cpu"))
    model = run.backbone
    calls = {"pairs": 0}
    original = model.fuse

    def counting_fuse(text, mask, image, **options):
        calls["pairs"] += text.shape[0]
        assert options.get("token_rows") == 0  # ITM scoring reads the pooled features only
        return original(text, mask, image, **options)

    model.fuse = counting_fuse
    counter = FusionCallCounter()
    examples = run.data.splits["test"]
    report = evaluate_retrieval(model, examples, run.collate, 7, torch.device("cpu"), rerank_k=3, counter=counter)
    n = len(examples)
    assert calls["pairs"] == counter.pairs == 2 * n * 3  # N x k per direction, never N x N
    plain = evaluate_retrieval(model, examples, run.collate, 7, torch.device("cpu"))
    assert calls["pairs"] == 2 * n * 3  # embedding-only evaluation never fuses
    # re-ranking only reorders the top-k: R@K for K >= k is unchanged
    assert report["itm_reranked"]["i2t"]["R@5"] == plain["i2t"]["R@5"]
    assert report["i2t"] == plain["i2t"]


# ----------------------------------------------------------------------------- image-use checks


def _micro_vqa_run(micro_preset):
    """A micro VQA fine-tuning run (not trained) and four of its test examples."""
    from mpma.config import FinetuneConfig, load_config
    from mpma.pipelines.finetuning import FinetuneRun

    config = load_config(None, [f"preset={micro_preset}", *SMALL_DATA], cls=FinetuneConfig)
    run = FinetuneRun(config, torch.device("cpu"))
    return run, run.data.splits["test"][:4]


def test_blank_images_collate_zeros_and_shuffled_eval_reassigns_images(tmp_path, micro_preset):
    """A question-only model sees all-zero images; the shuffled test score differs from the plain one
    only through the images (each example keeps its question and answer)."""
    from mpma.data.collate import TaskCollator

    run, examples = _micro_vqa_run(micro_preset)
    batch = run.collate(examples)
    assert batch["images"].abs().sum() > 0
    blank = TaskCollator(run.tokenizer, 16, run.collate.images, reads_image=True, text_fields=("question",),
                         target="answer", classes=run.classes, blank_images=True)(examples)
    assert torch.count_nonzero(blank["images"]) == 0
    assert torch.equal(blank["input_ids"], batch["input_ids"])

    seen, collate = [], run.collate

    def recording_collate(batch_examples):
        seen.extend(batch_examples)
        return collate(batch_examples)

    run.collate = recording_collate
    original = run.data.splits["test"]
    run.evaluate("test", shuffle_images=True)
    assert [e["question"] for e in seen] == [e["question"] for e in original]
    assert [e["answer"] for e in seen] == [e["answer"] for e in original]
    assert [e["image"] for e in seen] != [e["image"] for e in original]
    assert sorted(map(repr, (e["image"] for e in seen))) == sorted(map(repr, (e["image"] for e in original)))


def test_blank_text_collate_keeps_only_the_special_tokens_and_the_images(tmp_path, micro_preset):
    """An image-only model: every question encodes to [CLS] [SEP] and padding; images and answers stay."""
    from mpma.data.collate import TaskCollator

    run, examples = _micro_vqa_run(micro_preset)
    batch = run.collate(examples)
    blank = TaskCollator(run.tokenizer, 16, run.collate.images, reads_image=True, text_fields=("question",),
                         target="answer", classes=run.classes, soft_targets=run.collate.soft_targets,
                         blank_text=True)(examples)
    special = {run.tokenizer.cls_token_id, run.tokenizer.sep_token_id}
    assert blank["attention_mask"].sum(dim=1).tolist() == [2] * len(examples)
    assert all(set(row[mask.bool()].tolist()) == special for row, mask in zip(blank["input_ids"], blank["attention_mask"]))
    assert batch["attention_mask"].sum(dim=1).min() > 2  # the questions themselves are longer
    assert torch.equal(blank["images"], batch["images"]) and torch.equal(blank["targets"], batch["targets"])


def test_blanking_both_inputs_is_a_config_error():
    from mpma.config import ConfigError, FinetuneConfig, load_config

    with pytest.raises(ConfigError, match="nothing to read"):
        load_config(None, ["data.blank_images=true", "data.blank_text=true"], cls=FinetuneConfig)


@pytest.mark.parametrize("task, blank, message", [("img_cls", "data.blank_text=true", "img_cls.*reads no text"),
                                                   ("txt_cls", "data.blank_images=true", "txt_cls.*reads no image")])
def test_blanking_an_input_the_task_does_not_read_is_a_clear_error(micro_preset, task, blank, message):
    from mpma.config import ConfigError, FinetuneConfig, load_config
    from mpma.pipelines.finetuning import FinetuneRun

    config = load_config(None, [f"preset={micro_preset}", f"task={task}", blank, *SMALL_DATA], cls=FinetuneConfig)
    with pytest.raises(ConfigError, match=message):
        FinetuneRun(config, torch.device("cpu"))


@pytest.mark.slow
def test_question_only_run_skips_the_shuffled_score_and_image_runs_record_it(tmp_path, micro_preset):
    image_run, blank_run, image_only_run = tmp_path / "image", tmp_path / "blank", tmp_path / "image_only"
    assert main(["finetune", "vqa", "--out", str(image_run), "--no-progress", f"preset={micro_preset}", *SMALL_DATA]) == 0
    assert main(["finetune", "vqa", "--out", str(blank_run), "--no-progress", f"preset={micro_preset}", *SMALL_DATA,
                 "data.blank_images=true"]) == 0
    assert main(["finetune", "vqa", "--out", str(image_only_run), "--no-progress", f"preset={micro_preset}",
                 *SMALL_DATA, "data.blank_text=true"]) == 0
    with_images = json.loads((image_run / "metrics.json").read_text())
    assert set(with_images["test_shuffled_images"]) >= {"overall", "open", "closed"}
    assert "test_shuffled_images" not in json.loads((blank_run / "metrics.json").read_text())
    image_only = json.loads((image_only_run / "metrics.json").read_text())
    assert set(image_only["test_shuffled_images"]) >= {"overall", "open", "closed"}
    assert json.loads((image_only_run / "config.json").read_text())["data"]["blank_text"] is True


@pytest.mark.parametrize("keep", ["best_val", "last"])
def test_kept_epoch_weights_are_what_best_holds_and_what_is_tested(tmp_path, micro_preset, keep):
    """keep=last: best/ holds the final epoch's weights (the last checkpoint's, tensor for tensor) and the
    test score is theirs; keep=best_val: the epoch with the best validation score."""
    from safetensors.torch import load_file

    from mpma.pipelines.finetuning import evaluate_run

    out = tmp_path / "run"
    assert main(["finetune", "vqa", "--out", str(out), "--no-progress", f"preset={micro_preset}", *SMALL_DATA,
                 "epochs=3", "optim.lr=3e-3", f"keep={keep}", "head.shuffled_eval=false", "head.train_fit=false"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    val = [json.loads(line)["val"]["overall"] for line in (out / "log.jsonl").read_text().splitlines() if '"val"' in line]
    assert len(val) == 3
    expected_epoch = 3 if keep == "last" else val.index(max(val)) + 1
    assert metrics["best_epoch"] == expected_epoch and metrics["keep"] == keep
    kept = load_file(str(out / "best" / "model.safetensors"))
    checkpoints = sorted((out / "checkpoints").glob("step_*"))
    final = load_file(str(checkpoints[-1] / "model.safetensors"))
    same_as_final = all(torch.equal(kept[name], final[name]) for name in final)
    assert same_as_final or keep == "best_val"
    assert evaluate_run(out, "test")["overall"] == metrics["test"]["overall"]


def _vqa_manifest_with_images(folder: Path, images: int = 6) -> Path:
    """Train and test splits only, every test image also a train image (as in VQA-RAD)."""
    import numpy as np
    from PIL import Image

    rows = []
    for i in range(images):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / f"img{i}.png")
        for q, split in enumerate(("train", "train", "test")):
            rows.append({"id": f"{i}-{q}", "image": f"img{i}.png", "question": f"is there a finding {q} in {i}?",
                         "answer": "yes" if (i + q) % 2 else "no", "answer_type": "CLOSED", "split": split})
    path = folder / "vqa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_no_validation_split_trains_on_all_of_train_and_keeps_the_last_epoch(tmp_path, micro_preset, capsys):
    """data.val_fraction=0: every training question is trained on, no epoch is validated, the last is kept;
    keep=best_val then has nothing to choose by and is refused before training."""
    manifest = _vqa_manifest_with_images(tmp_path)
    common = ["finetune", "vqa", "--data", str(manifest), "--no-progress", f"preset={micro_preset}", "epochs=2",
              "data.batch_size=4", "data.val_fraction=0", "head.shuffled_eval=false"]
    out = tmp_path / "run"
    assert main([*common, "--out", str(out), "keep=last"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split_sizes"] == {"train": 12, "val": 0, "test": 6}
    assert metrics["best_epoch"] == 2 and metrics["val_selection"] is None
    assert '"val"' not in (out / "log.jsonl").read_text()
    assert main([*common, "--out", str(tmp_path / "refused"), "keep=best_val"]) == 2
    assert "set keep=last" in capsys.readouterr().err


def test_keep_names_a_known_rule(tmp_path, capsys):
    assert main(["finetune", "vqa", "--out", str(tmp_path / "run"), "--no-progress", *SMALL_DATA, "keep=best"]) == 2
    assert "keep: expected one of best_val, last" in capsys.readouterr().err


def test_finetune_augmentation_is_seeded_per_epoch_and_never_touches_evaluation(tmp_path):
    import numpy as np
    from PIL import Image

    from mpma.data.image import load_image, to_tensor
    from mpma.data.collate import ExampleList, ImageStore, TaskCollator
    from mpma.data.text import train_tokenizer

    path = tmp_path / "ct.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 70), dtype=np.uint8)).save(path)
    examples = [{"image": str(path), "question": "is it normal?", "answer": "yes", "answer_type": "CLOSED"}]
    tokenizer = train_tokenizer(["is it normal?"], tmp_path / "tok", vocab_size=120)
    collate = TaskCollator(tokenizer, 16, ImageStore(32), reads_image=True, text_fields=("question",), target="answer",
                           classes=["yes"])
    plain = collate(examples)["images"][0]
    assert torch.allclose(plain, to_tensor(load_image(path), 32))  # evaluation: no augmentation
    dataset = ExampleList(examples, augment_seed=3)
    draws = []
    for epoch in (0, 0, 1):
        dataset.set_epoch(epoch)
        draws.append(collate([dataset[0]])["images"][0])
    assert torch.equal(draws[0], draws[1])  # same (seed, epoch, index): same crop
    assert not torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], plain)
    assert ExampleList(examples)[0] is examples[0]  # no seed: the example itself


def test_fused_classifier_boosts_only_its_new_classifier(micro_config):
    """optim.head_lr_mult reaches the answer classifier alone; the fusion learns at the backbone's rate."""
    from mpma.models.mpma import MPMAModel
    from mpma.tasks.classification import FusedClassifier

    module = FusedClassifier(MPMAModel(micro_config(), vocab_size=50, pad_token_id=0), classes=3)
    heads = module.head_parameter_names()
    assert heads and all(name.startswith("head.") for name in heads)
    assert any(name.startswith("backbone.fusion.") for name, _ in module.named_parameters())


@pytest.mark.slow
def test_fine_tuning_with_text_lr_mult_0_keeps_the_pretrained_text_encoder(tmp_path, pretrained_run):
    """optim.text_lr_mult reaches fine-tuning: at 0 the text encoder leaves training exactly as it came
    from the pre-trained run while the fusion learns."""
    from safetensors.torch import load_file

    out = tmp_path / "vqa"
    assert main(["finetune", "vqa", "--init", str(pretrained_run), "--out", str(out), "--no-progress", *SMALL_DATA,
                 "optim.text_lr_mult=0", "optim.weight_decay=0.1", "keep=last"]) == 0
    start = load_file(next((pretrained_run / "checkpoints").iterdir()) / "model.safetensors")
    tuned = {k.removeprefix("backbone."): v for k, v in load_file(out / "best" / "model.safetensors").items()}
    text = [k for k in start if k.startswith("text.")]
    assert text and all(torch.equal(start[k], tuned[k]) for k in text)
    fusion = [k for k in start if k.startswith("fusion.layers.0.text_stream.") and k.endswith(".weight")]
    assert fusion and not any(torch.equal(start[k], tuned[k]) for k in fusion)


def test_label_smoothing_spreads_the_cross_entropy_target(micro_config):
    """head.label_smoothing reaches the VQA module: loss = (1 - e) * CE + e * mean over classes of -log p."""
    from mpma.config import FinetuneConfig
    from mpma.models.mpma import MPMAModel
    from mpma.tasks.base import get_task

    config = FinetuneConfig()
    config.head.vqa_loss, config.head.label_smoothing = "ce", 0.2
    module = get_task("vqa").build_module(config, MPMAModel(micro_config(), vocab_size=50, pad_token_id=0),
                                          ["yes", "no", "left"], multi_label=False)
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    targets = torch.tensor([0, 2])
    module.logits = lambda batch: logits  # the loss alone, on fixed logits
    log_p = logits.log_softmax(1)
    expected = (0.8 * -log_p[torch.arange(2), targets] + 0.2 * -log_p.mean(1)).mean()
    assert torch.allclose(module({"targets": targets}).losses["task"], expected)
    module.label_smoothing = 0.0
    assert torch.allclose(module({"targets": targets}).losses["task"], -log_p[torch.arange(2), targets].mean())


@pytest.mark.parametrize("task, loss", [("vqa", ["head.vqa_loss=bce"]), ("img_cls", [])])
def test_label_smoothing_needs_a_single_label_cross_entropy(tmp_path, capsys, task, loss):
    """VQA's soft-score BCE (M3AE's recipe) and the uni-modal tasks have nothing to smooth: an error, not a
    silent no-op."""
    out = tmp_path / "run"
    assert main(["finetune", task, "--out", str(out), "--no-progress", *SMALL_DATA, *loss,
                 "head.label_smoothing=0.1"]) == 2
    assert "head.label_smoothing=0.1" in capsys.readouterr().err


VQA_RECIPE = {"head.vqa_loss": "ce", "head.pool": "mean", "optim.head_lr_mult": 10.0, "optim.grad_clip": 0.0,
              "optim.beta2": 0.98}
M3AE_RECIPE = {"head.vqa_loss": "bce", "head.pool": "cls", "optim.head_lr_mult": 3.0, "optim.grad_clip": 1.0,
               "optim.beta2": 0.999}


def _settings(config, keys) -> dict:
    values = {}
    for key in keys:
        section, name = key.split(".")
        values[key] = getattr(getattr(config, section), name)
    return values


@pytest.mark.parametrize("task, source, overrides, expected", [
    ("vqa", None, [], VQA_RECIPE),  # the task's recipe replaces the dataclass defaults
    ("vqa", None, ["head.vqa_loss=bce", "optim.grad_clip=1"],  # the command line beats the recipe, key by key
     {**VQA_RECIPE, "head.vqa_loss": "bce", "optim.grad_clip": 1.0}),
    ("vqa", "finetune/vqa_m3ae", [], M3AE_RECIPE),  # a --config file beats the recipe
    ("vqa", "finetune/vqa_m3ae", ["head.pool=mean"], {**M3AE_RECIPE, "head.pool": "mean"}),
    ("vqa", "finetune/vqa_real", ["epochs=3"], VQA_RECIPE),
    ("mm_cls", None, [], M3AE_RECIPE),  # a recipe belongs to its task: mm_cls keeps the dataclass defaults
])
def test_the_vqa_recipe_lies_beneath_a_config_file_and_the_overrides(task, source, overrides, expected):
    from mpma.pipelines.finetuning import finetune_config

    config = finetune_config(task, "scratch", None, source, overrides)
    assert _settings(config, expected) == expected


def test_a_user_config_file_without_the_recipe_keys_keeps_the_recipe(tmp_path):
    from mpma.pipelines.finetuning import finetune_config

    source = tmp_path / "mine.yaml"
    source.write_text("epochs: 2\nhead: {hidden_mult: 1.0}\noptim: {lr: 1.0e-4}\n")
    config = finetune_config("vqa", "scratch", None, str(source), [])
    assert _settings(config, VQA_RECIPE) == VQA_RECIPE
    assert (config.epochs, config.head.hidden_mult, config.optim.lr) == (2, 1.0, 1e-4)


@pytest.mark.parametrize("override, key", [("optim.steps=5", "optim.steps"), ("run.checkpoint_every=3", "run.checkpoint_every")])
def test_fine_tuning_refuses_a_step_schedule_instead_of_overwriting_it(tmp_path, capsys, override, key):
    """Fine-tuning counts epochs: a user-set step count is an error naming the key, never silently replaced."""
    out = tmp_path / "run"
    assert main(["finetune", "vqa", "--out", str(out), "--no-progress", *SMALL_DATA, override]) == 2
    error = capsys.readouterr().err
    assert f"{key}=" in error and "set epochs=N" in error
    assert not (out / "config.json").exists()


def test_fine_tuning_keeps_a_user_set_warmup(tmp_path):
    from mpma.config import FinetuneConfig
    from mpma.pipelines.finetuning import fix_schedule

    config = FinetuneConfig()
    config.optim.warmup_steps = 7
    fix_schedule(config, epochs=3, steps_per_epoch=10)
    assert (config.optim.steps, config.optim.warmup_steps, config.run.checkpoint_every) == (30, 7, 10)
    config = FinetuneConfig()
    fix_schedule(config, epochs=3, steps_per_epoch=10)
    assert config.optim.warmup_steps == 3  # warmup_fraction 0.1 of 30 steps
