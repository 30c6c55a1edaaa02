"""Open ``mpma demo`` in headless Chromium, ask one VQA question, save a screenshot of the page.

    python benchmarks/demo_screenshot.py --model runs/quickstart/vqa-pretrained --out docs/img/demo.png
    python benchmarks/demo_screenshot.py            # an untrained micro VQA model (checks the page only)

Needs the ``demo-browser`` extra (gradio + Playwright: ``pip install -e ".[demo-browser]"``) and a
system Chromium (Debian: ``apt-get install chromium``); Playwright drives that binary, it downloads
no browser of its own. Without either it prints why and exits 0 (a skip), so CI without them passes.
It fails (exit 1) when the answers or the word->patch map do not appear, or when the page asked any
host other than the local server for anything (the demo must load nothing from the network).

The image and question are a held-out synthrad case and one of its own VQA questions.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
SKIP = 0  # exit status of a skip (the check could not run here)


def find_chromium() -> str | None:
    """The path of a system Chromium, or None."""
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def skip_reason() -> str | None:
    """Why the check cannot run here (None when it can)."""
    try:
        import gradio  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        return f'{error.name} is not installed: pip install -e ".[demo-browser]"'
    if find_chromium() is None:
        return "no Chromium on PATH: apt-get install chromium (Debian)"
    return None


def micro_vqa_model(folder: Path) -> Path:
    """An untrained micro VQA model (32 px) with a tokenizer trained on 300 synthrad reports."""
    import torch

    from mpma.config import load_config
    from mpma.data.synthrad import SynthRad
    from mpma.data.text import train_tokenizer
    from mpma.hub import save_pretrained
    from mpma.models.mpma import MPMAModel
    from mpma.tasks.classification import FusedClassifier

    cases = SynthRad(300, seed=0, image_size=64)
    tokenizer = train_tokenizer([cases[i].report for i in range(len(cases))], folder / "tokenizer", vocab_size=400)
    config = load_config("tiny", ["vision.image_size=64", "vision.patch_size=8", "vision.width=32", "vision.depth=1",
                                  "vision.heads=2", "text.width=32", "text.depth=1", "text.heads=2",
                                  "text.intermediate=64", "fusion.width=32", "fusion.depth=1", "fusion.heads=2",
                                  "decoder.width=16", "decoder.depth=1", "decoder.heads=2", "objectives.align_dim=16"])
    torch.manual_seed(0)
    backbone = MPMAModel(config, len(tokenizer), tokenizer.pad_token_id)
    answers = ["yes", "no", "left", "right", "nodule", "effusion"]
    return save_pretrained(FusedClassifier(backbone, len(answers), "ce"), folder / "model", tokenizer,
                           task={"task": "vqa", "classes": answers}, config=config)


def question_image(folder: Path, size: int = 256) -> tuple[Path, str]:
    """(PNG path, question): a held-out synthrad case with a finding and its first closed question."""
    from PIL import Image

    from mpma.data.synthrad import TEST_OFFSET, SynthRad

    cases = SynthRad(20, seed=0, image_size=size, offset=TEST_OFFSET)
    case = next(cases[i] for i in range(len(cases)) if cases[i].findings)
    path = folder / f"synthrad_test_{case.index}.png"
    Image.fromarray(case.image).save(path)
    return path, case.vqa[0].question


def screenshot(model: str | Path, out: Path, timeout_s: float = 60.0) -> dict:
    """Serve ``model``, ask one question in Chromium, save ``out``; returns what the page showed.

    Raises:
        RuntimeError: no answer or no map appeared, or the page requested a non-local host.
    """
    from playwright.sync_api import sync_playwright

    from mpma.demo.app import build_app, launch
    from mpma.demo.service import DemoService
    from mpma.inference import Predictor

    work = Path(tempfile.mkdtemp(prefix="mpma-demo-shot-"))
    image, question = question_image(work)
    app = build_app(DemoService(Predictor.from_pretrained(model, device="cpu"), workdir=work / "maps"),
                    title="mpma demo")
    url = launch(app, block=False, quiet=True)
    server = urlparse(url).netloc
    foreign: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=find_chromium(), headless=True,
                                                 args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
            page.on("request", lambda request: foreign.append(request.url)
                    if urlparse(request.url).netloc not in (server, "") and not request.url.startswith("data:") else None)
            page.goto(url, wait_until="networkidle", timeout=timeout_s * 1000)
            page.locator("input[type=file]").first.set_input_files(str(image))
            page.locator("#vqa-question textarea").fill(question)
            time.sleep(0.5)  # the upload finishes before the click reads the file component
            page.locator("#vqa-answer").click()
            page.locator("#vqa-map img").wait_for(state="visible", timeout=timeout_s * 1000)
            page.wait_for_timeout(500)  # the image decodes and the label bars settle
            answers = page.locator("#vqa-answers").inner_text()
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        app.close()
    if foreign:
        raise RuntimeError(f"the page requested other hosts than {server}: {sorted(set(foreign))[:5]}")
    if not answers.strip():
        raise RuntimeError("no answers appeared on the page")
    return {"url": url, "question": question, "image": str(image), "answers": answers, "screenshot": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model or fine-tuning run folder (default: an untrained micro VQA model)")
    parser.add_argument("--out", default="docs/img/demo.png", help="PNG path (default: docs/img/demo.png)")
    args = parser.parse_args(argv)
    reason = skip_reason()
    if reason:
        print(f"SKIPPED: {reason}")
        return SKIP
    model = args.model or micro_vqa_model(Path(tempfile.mkdtemp(prefix="mpma-demo-model-")))
    try:
        result = screenshot(model, Path(args.out))
    except RuntimeError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    print(f"question: {result['question']}\nanswers on the page: {' '.join(result['answers'].split())}\n"
          f"screenshot: {result['screenshot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
