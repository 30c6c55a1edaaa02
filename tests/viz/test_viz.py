"""Figures: training curves, MAE reconstructions, word->patch maps and the pointing game (micro models).

The maps and the pointing game are computed by mpma.eval.pointing (P), drawn by mpma.viz.alignment (A)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mpma.cli import main
from mpma.eval import pointing as P
from mpma.viz import alignment as A
from mpma.viz import curves as C
from mpma.viz import reconstruct as R


def _png(path: Path, size_inches: tuple[float, float] | None = None, dpi: int = 100) -> np.ndarray:
    """Open a PNG; check its pixel size (when given) and that it is not a constant image."""
    image = Image.open(path)
    if size_inches is not None:
        assert image.size == (round(size_inches[0] * dpi), round(size_inches[1] * dpi))
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 1.0, f"{path} is a constant image"
    return pixels


def _write_log(path: Path, rows: list[dict], tail: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


def _rows(n: int, start: int = 1) -> list[dict]:
    return [{"step": s, "lr": 1e-3 * min(1, s / 5), "mlm": 5.0 / s, "mim": 1.0 - 0.01 * s, "loss": 6.0 / s,
             "samples_per_s": 100.0 + s} for s in range(start, start + n)]


@pytest.fixture(scope="module")
def loaded(micro_run):
    from mpma.hub import load_model

    return load_model(micro_run)


# ------------------------------------------------------------------------------ curves


def test_smoothing_skips_nan_and_is_debiased():
    values = np.array([np.nan, 2.0, np.nan, 4.0])
    out = C.smooth(values, 0.5)
    assert math.isnan(out[0])
    assert out[1] == pytest.approx(2.0)  # debiased: the first finite value is itself
    assert out[2] == pytest.approx(2.0)  # a NaN keeps the running value
    assert out[3] == pytest.approx((0.5 * 0.5 * 2 + 0.5 * 4) / (0.5 * 0.5 + 0.5))
    assert np.array_equal(C.smooth(np.array([1.0, 3.0]), 0.0), [1.0, 3.0])


def test_curves_png_size_and_panels(tmp_path):
    run = _write_log(tmp_path / "a", _rows(30))
    log = C.read_log(run)
    assert log.n_lines == 30 and log.skipped == 0 and log.last_step == 30
    names = C.panel_names([log])
    assert names[:3] == ["loss", "mlm", "mim"] and names[-2:] == ["lr", "samples_per_s"]
    out = C.plot_curves([log], tmp_path / "c.png")
    _png(out, C.figure_size(len(names)), C.DPI)


def test_scheduled_loss_weights_sit_beside_the_rate_and_are_drawn_raw(tmp_path, monkeypatch):
    rows = [{**row, "grad_norm": 1.0, "weight_mim": 1.0 + 0.1 * row["step"], "weight_local_align": 0.5}
            for row in _rows(12)]
    log = C.read_log(_write_log(tmp_path / "a", rows))
    names = C.panel_names([log])
    assert names[-5:] == ["lr", "weight_local_align", "weight_mim", "grad_norm", "samples_per_s"]
    smoothed = []
    monkeypatch.setattr(C, "smooth", lambda values, weight: smoothed.append(values.copy()) or values)
    C.plot_curves([log], tmp_path / "c.png", smoothing=0.6)
    drawn = {tuple(np.round(values, 6)) for values in smoothed}
    assert tuple(np.round([1.0 + 0.1 * s for s in range(1, 13)], 6)) not in drawn  # the weight: raw only
    assert tuple(np.round([5.0 / s for s in range(1, 13)], 6)) in drawn  # a loss term: smoothed


def test_curves_with_one_step(tmp_path):
    log = C.read_log(_write_log(tmp_path / "one", _rows(1)))
    _png(C.plot_curves([log], tmp_path / "one.png"), C.figure_size(len(C.panel_names([log]))), C.DPI)


def test_curves_with_nan_null_and_infinite_values(tmp_path):
    rows = _rows(6)
    rows[2]["mlm"] = float("nan")
    rows[3]["mlm"] = float("inf")
    rows[4]["mim"] = None
    run = _write_log(tmp_path / "nan", rows)  # json.dumps writes NaN / Infinity, which json.loads reads back
    log = C.read_log(run)
    assert int(np.isnan(log.series["mlm"][1]).sum()) == 1 and int(np.isinf(log.series["mlm"][1]).sum()) == 1
    assert math.isnan(log.series["mim"][1][4])
    _png(C.plot_curves([log], tmp_path / "nan.png"), C.figure_size(len(C.panel_names([log]))), C.DPI)


def test_curves_of_a_run_being_written_and_overlaid_runs(tmp_path, capsys):
    """A half-written last line is skipped; two runs overlay through the CLI; val.* lines get panels."""
    a = _write_log(tmp_path / "a", _rows(5), tail='{"step": 6, "lr": 0.001, "ml')
    b = _write_log(tmp_path / "b", [*_rows(4), {"step": 4, "epoch": 1, "val": {"overall": 0.5, "n": 12, "per": {"x": 1}}}])
    assert C.read_log(a).skipped == 1 and C.read_log(a).last_step == 5
    log_b = C.read_log(b)
    assert "val.overall" in log_b.series and "val.n" in log_b.series and "val.per" not in log_b.series
    assert "val.n" not in C.panel_names([log_b])  # sample counts are not curves
    out = tmp_path / "both.png"
    assert main(["visualize", "curves", "--run", str(a), "--run", str(b / "log.jsonl"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    names = C.panel_names([C.read_log(a), log_b])
    _png(out, C.figure_size(len(names)), C.DPI)
    assert main(["visualize", "curves", "--run", str(a)]) == 0  # one run: RUN/curves.png
    assert (a / "curves.png").is_file()


def test_curves_of_an_empty_log_and_a_missing_one(tmp_path):
    empty = _write_log(tmp_path / "empty", [])
    _png(C.plot_curves([C.read_log(empty)], tmp_path / "empty.png"), C.figure_size(0), C.DPI)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checkpoint before the first log line: nothing to draw, no warning
        assert C.write_run_curves(tmp_path / "missing") is None
    (tmp_path / "unreadable" / "log.jsonl").mkdir(parents=True)
    with pytest.warns(UserWarning, match="could not draw"):
        assert C.write_run_curves(tmp_path / "unreadable") is None  # never raises: training must go on


def test_pretraining_writes_curves_png(micro_run):
    log = C.read_log(micro_run)
    _png(micro_run / "curves.png", C.figure_size(len(C.panel_names([log]))), C.DPI)


# ------------------------------------------------------------------------------ reconstructions


def test_reconstruction_pastes_only_masked_patches(loaded):
    from mpma.viz.common import case_tensor, synthrad_cases, tokenize_texts

    cases = synthrad_cases(loaded.config, 2)
    images = torch.stack([case_tensor(c, loaded.preprocess) for c in cases])
    batch = tokenize_texts(loaded.tokenizer, [c.report for c in cases], 48)
    pre = loaded.preprocess
    result = R.reconstruct(loaded.backbone, images, batch["input_ids"], batch["attention_mask"], pre["mean"], pre["std"],
                           0.5, torch.Generator().manual_seed(0))
    p, grid = loaded.config.vision.patch_size, loaded.config.vision.image_size // loaded.config.vision.patch_size
    mask = np.kron(result.mask.reshape(-1, grid, grid), np.ones((p, p)))[..., None] > 0  # (B, H, W, 1)
    assert result.mask.sum(1).tolist() == [grid * grid / 2] * 2
    np.testing.assert_allclose(np.where(mask, 0, result.pasted), np.where(mask, 0, result.original), atol=1e-5)
    np.testing.assert_allclose(np.where(mask, result.pasted, 0), np.where(mask, result.reconstruction, 0), atol=1e-5)
    again = R.reconstruct(loaded.backbone, images, batch["input_ids"], batch["attention_mask"], pre["mean"], pre["std"],
                          0.5, torch.Generator().manual_seed(0))
    assert np.array_equal(again.mask, result.mask)  # same seed, same mask


def test_reconstruct_command_png(micro_run, tmp_path, capsys):
    out = tmp_path / "rec.png"
    assert main(["visualize", "reconstruct", "--model", str(micro_run), "--synthrad", "2", "--out", str(out)]) == 0
    _png(out, R.figure_size(2))
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(image)
    assert main(["visualize", "reconstruct", "--model", str(micro_run), "--image", str(image), "--text", "a nodule",
                 "--mask-seed", "3", "--out", str(out)]) == 0
    _png(out, R.figure_size(1))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "x.png", "text": "a nodule"}) + "\n" + json.dumps({"image": str(image)}) + "\n")
    assert main(["visualize", "reconstruct", "--model", str(micro_run), "--manifest", str(manifest), "--out", str(out)]) == 0
    _png(out, R.figure_size(2))
    assert main(["visualize", "reconstruct", "--model", str(micro_run), "--out", str(out)]) == 2
    assert "--image" in capsys.readouterr().err


# ------------------------------------------------------------------------------ alignment maps


def test_alignment_maps_have_the_patch_grid_shape(loaded):
    from mpma.viz.common import case_tensor, synthrad_cases, tokenize_texts

    cases = synthrad_cases(loaded.config, 3)
    images = torch.stack([case_tensor(c, loaded.preprocess) for c in cases])
    batch = tokenize_texts(loaded.tokenizer, [c.report for c in cases], 48)
    maps = P.token_maps(loaded.backbone, images, batch["input_ids"], batch["attention_mask"])
    grid = loaded.config.vision.image_size // loaded.config.vision.patch_size
    assert maps.grid == grid
    assert maps.local.shape == (*batch["input_ids"].shape, grid, grid)
    assert maps.attention.shape == maps.local.shape
    assert maps.local.abs().max() <= 1 + 1e-5  # cosine similarities
    assert (maps.attention >= 0).all() and (maps.attention.sum((-1, -2)) <= 1 + 1e-5).all()  # CLS column removed
    words = A.content_words(loaded.tokenizer, cases[0].report, 48)
    assert words and all(w.lower() not in P.STOPWORDS for w, _ in words)
    assert P.word_map(maps.local[0], words[0][1]).shape == (grid, grid)


def test_alignment_command_png(micro_run, loaded, tmp_path, capsys):
    out = tmp_path / "al.png"
    text = "Large nodule in the right upper lobe."
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)).save(image)
    assert main(["visualize", "alignment", "--model", str(micro_run), "--image", str(image), "--text", text,
                 "--out", str(out)]) == 0
    words = A.content_words(loaded.tokenizer, text, 48)
    _png(out, A.word_maps_size(2, len(words)))
    assert main(["visualize", "alignment", "--model", str(micro_run), "--image", str(image), "--text", text,
                 "--words", "nodule", "right", "--out", str(out)]) == 0
    _png(out, A.word_maps_size(2, 2))
    assert main(["visualize", "alignment", "--model", str(micro_run), "--image", str(image), "--text", text,
                 "--words", "effusion", "--out", str(out)]) == 2
    assert "not in the text" in capsys.readouterr().err


def test_alignment_of_a_vqa_model_shows_the_question_attention_and_answer(loaded, tmp_path, tokenizer):
    import copy

    from mpma.hub import load_model, save_pretrained
    from mpma.tasks.classification import FusedClassifier

    module = FusedClassifier(copy.deepcopy(loaded.backbone), 2, "ce", hidden=64)
    folder = save_pretrained(module, tmp_path / "vqa", tokenizer, task={"task": "vqa", "classes": ["yes", "no"]})
    vqa = load_model(folder)
    path, info = A.alignment_figure(vqa, np.zeros((32, 32), np.uint8) + np.arange(32, dtype=np.uint8)[None] * 8,
                                    "Is there a nodule?", tmp_path / "vqa.png")
    assert info["answer"]["answer"] in ("yes", "no") and 0 <= info["answer"]["probability"] <= 1
    _png(path, A.word_maps_size(2, len(info["words"])))


# ------------------------------------------------------------------------------ pointing game


def test_box_patches_counts_any_area_overlap():
    # 32 px image, 4x4 grid of 8 px patches; box rows 2..5, columns 10..19 -> patch row 0, columns 1 and 2
    inside = P.box_patches((2, 10, 6, 20), 4, 32)
    assert inside.sum() == 2 and inside[0, 1] and inside[0, 2]
    # exclusive ends: a box exactly covering patch (1, 1) touches no neighbour
    assert np.argwhere(P.box_patches((8, 8, 16, 16), 4, 32)).tolist() == [[1, 1]]
    # 8x8 grid on a 64 px image, box of one pixel -> one patch
    assert P.box_patches((63, 0, 64, 1), 8, 64).sum() == 1


def test_pointing_game_on_a_constructed_case():
    hit_map = np.zeros((4, 4))
    hit_map[0, 2] = 1.0
    miss_map = np.zeros((4, 4))
    miss_map[3, 3] = 1.0
    boxes = [(2, 10, 6, 20), (8, 8, 16, 16)]
    assert P.pointing_hit(hit_map, boxes[0], 32) and not P.pointing_hit(miss_map, boxes[1], 32)
    result = P.pointing_game([hit_map, miss_map], boxes, 32)
    assert (result.hits, result.n) == (1, 2)
    assert result.hit_rate == 0.5
    assert result.chance == pytest.approx((2 / 16 + 1 / 16) / 2)
    # a map that is the box indicator always hits
    maps = [P.box_patches(b, 4, 32).astype(float) for b in boxes]
    assert P.pointing_game(maps, boxes, 32).hit_rate == 1.0


def test_every_located_finding_is_found_in_its_report():
    from mpma.data.synthrad import Finding, generate_case

    case = generate_case(5, findings=[Finding("nodule", "left", "lower", "small"),
                                      Finding("nodule", "right", "upper", "large")])
    mentions = P.finding_mentions(case)
    assert len(mentions) == 2
    for finding, box, (start, end) in mentions:
        sentence = case.report[: end].rsplit(".", 1)[-1] + case.report[end:].split(".", 1)[0]
        assert finding.side in sentence and box in case.boxes  # each mention in its own side's sentence
        assert case.report[start:end].lower() in P._phrases("nodule")
    found = total = 0
    for index in range(60):
        case = generate_case(index, image_size=32)
        located = [f for f in case.findings if f.kind in P.LATERAL]
        total += len(located)
        found += sum(f.kind in P.LATERAL for f, _, _ in P.finding_mentions(case))
    assert total > 40 and found == total


def test_pointing_game_command(micro_run, tmp_path, capsys):
    out, report = tmp_path / "pt.png", tmp_path / "pt.json"
    assert main(["visualize", "alignment", "--model", str(micro_run), "--eval", "--n", "12", "--out", str(out),
                 "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "hit rate" in printed and "chance" in printed
    result = json.loads(report.read_text())
    assert result["n_mentions"] > 0 and set(result["maps"]) == {"local", "attention", "word-agnostic"}
    for entry in result["maps"].values():
        assert 0 <= entry["hit_rate"] <= 1 and entry["n"] == result["n_mentions"]
    assert 0 < result["chance_rate"] < 1
    _png(out)


def test_viz_imports_only_lower_layers():
    """viz draws what it is given: it never imports inference, pipelines, the hub, the engine or the CLI."""
    import subprocess
    import sys

    code = ("import sys\nimport mpma.viz.alignment, mpma.viz.common, mpma.viz.curves, mpma.viz.reconstruct, "
            "mpma.viz.report\nprint(sorted(m for m in sys.modules if m.split('.')[:2] in "
            "(['mpma', 'inference'], ['mpma', 'pipelines'], ['mpma', 'hub'], ['mpma', 'engine'], ['mpma', 'cli'])))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
