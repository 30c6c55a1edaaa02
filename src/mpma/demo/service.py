"""What the web demo computes, without the web: checked inputs in, plain Python results out.

:class:`DemoService` wraps a :class:`mpma.inference.Predictor`. It decides which tabs a model gets
(from the predictor's capabilities, which ask the task registry), checks every upload and text
before the model sees it, and returns results in the shapes the page shows (label -> probability
dicts, ranked rows, a PNG path). Every rejected input is a :class:`DemoInputError` whose message is
meant for the page. Gradio is not imported here (see :mod:`mpma.demo.app`), so this module is
tested and usable without the ``demo`` extra.
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mpma.data.image import ImageError, image_to_array
from mpma.inference import Predictor
from mpma.viz.alignment import alignment_figure

MAX_UPLOAD_MB = 20.0  # an upload larger than this is refused before it is decoded
MAX_GALLERY = 32  # images a retrieval gallery (or texts a candidate list) may hold
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
DEFAULT_TEMPLATE = "a chest radiograph showing {label}"


class DemoInputError(ValueError):
    """An input the demo refuses (shown on the page as the message)."""


def split_lines(text: str | None, separators: str = "\n") -> list[str]:
    """Non-empty stripped items of ``text`` split on any character of ``separators``."""
    items = [text or ""]
    for sep in separators:
        items = [part for item in items for part in item.split(sep)]
    return [item.strip() for item in items if item.strip()]


@dataclass
class DemoService:
    """The demo's computations on one loaded model.

    Args:
        predictor: the loaded model.
        max_upload_mb: uploads above this size (in MB) are refused.
        workdir: folder for the word->patch map PNGs (default: a new temporary folder).
    """

    predictor: Predictor
    max_upload_mb: float = MAX_UPLOAD_MB
    workdir: Path | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="mpma-demo-"))
        self.workdir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ what the model can do

    @property
    def tabs(self) -> list[str]:
        """The tabs this model supports, in page order: "vqa", "retrieval", "zero_shot"."""
        tabs = ["vqa"] if self.predictor.can_answer else []
        if self.predictor.can_embed:
            tabs += ["retrieval", "zero_shot"]
        return tabs

    def describe(self) -> str:
        """One line about the model for the page header."""
        task = self.predictor.task or "backbone (no task head)"
        classes = f", {len(self.predictor.classes)} classes" if self.predictor.classes else ""
        return f"task: {task}{classes}; image size {self.predictor.image_size} px; device {self.predictor.device}"

    # ------------------------------------------------------------------ input checks

    def load_image(self, path: str | Path | None, what: str = "the image") -> np.ndarray:
        """An uploaded file -> (H, W) or (H, W, 3|4) uint8 array, or a :class:`DemoInputError`.

        Refused: no file, an empty file, a file above ``max_upload_mb``, a file that is not a PNG, JPEG
        or DICOM image (decoding is tried whatever the name says).
        """
        if path is None or str(path) == "":
            raise DemoInputError(f"upload {what} (PNG, JPEG or DICOM)")
        file = Path(path)
        if not file.is_file():
            raise DemoInputError(f"{what}: the upload {file.name} was not received; upload it again")
        size = file.stat().st_size
        if size == 0:
            raise DemoInputError(f"{what}: {file.name} is empty (0 bytes)")
        if size > self.max_upload_mb * 1e6:
            raise DemoInputError(f"{what}: {file.name} is {size / 1e6:.1f} MB, above the demo's limit of "
                                 f"{self.max_upload_mb:g} MB (mpma demo --max-upload-mb N raises it)")
        try:
            return image_to_array(file)
        except ImageError as error:
            raise DemoInputError(f"{what}: {file.name} is not a readable PNG, JPEG or DICOM image "
                                 f"({_short(error)})") from None

    @staticmethod
    def check_text(text: str | None, what: str) -> str:
        """A non-empty stripped text, or a :class:`DemoInputError` naming ``what``."""
        if text is None or not str(text).strip():
            raise DemoInputError(f"{what} is empty; type {what}")
        return str(text).strip()

    @staticmethod
    def check_top_k(top_k: float | int | None) -> int:
        if top_k is None or int(top_k) != top_k or int(top_k) < 1:
            raise DemoInputError(f"top-k must be a whole number >= 1, got {top_k!r}")
        return int(top_k)

    # ------------------------------------------------------------------ VQA

    def answer(self, image_path: str | None, question: str | None, top_k: int = 5) -> tuple[dict[str, float], str | None, str]:
        """Top-k answers and the question's word->patch map.

        Returns:
            ({answer: probability} best first, the map PNG path or None, a note: what the map shows or
            why there is none).
        """
        if not self.predictor.can_answer:
            raise DemoInputError("this model has no VQA head")
        question = self.check_text(question, "the question")
        top_k = self.check_top_k(top_k)
        image = self.load_image(image_path)
        with self._lock:
            answers = self.predictor.answer(image, question, top_k=top_k)
            map_path, note = self._word_maps(image, question)
        return {a["answer"]: a["probability"] for a in answers}, map_path, note

    def _word_maps(self, image: np.ndarray, text: str) -> tuple[str | None, str]:
        """The ``mpma visualize alignment`` figure of ``image`` and ``text`` (None and the reason when the
        text has no content word to map)."""
        out = self.workdir / f"alignment-{uuid.uuid4().hex}.png"
        try:
            path, info = alignment_figure(self.predictor.model, image, text, out)
        except ValueError as error:  # e.g. no content words in the text
            return None, f"no word->patch map: {error}"
        return str(path), f"word->patch maps of {', '.join(info['words'])} on the {info['grid']}x{info['grid']} patch grid"

    # ------------------------------------------------------------------ retrieval

    def _require_embedding(self) -> None:
        if not self.predictor.can_embed:
            raise DemoInputError("this model has no GLA-global alignment head (retrieval and zero-shot need one)")

    def rank_images(self, text: str | None, image_paths: Sequence[str] | None, top_k: int = 5) -> list[list]:
        """A report text ranks a gallery of uploaded images: rows ``[rank, file name, cosine similarity]``."""
        self._require_embedding()
        text = self.check_text(text, "the report text")
        paths = list(image_paths or [])
        if not paths:
            raise DemoInputError("upload the gallery images to rank (PNG, JPEG or DICOM)")
        if len(paths) > MAX_GALLERY:
            raise DemoInputError(f"{len(paths)} gallery images; the demo ranks at most {MAX_GALLERY}")
        images = [self.load_image(p, f"gallery image {i + 1}") for i, p in enumerate(paths)]
        with self._lock:
            ranked = self.predictor.retrieve(text, images, top_k=self.check_top_k(top_k), direction="t2i")
        return [[r["rank"], Path(paths[r["index"]]).name, round(r["score"], 4)] for r in ranked]

    def rank_texts(self, image_path: str | None, texts: str | None, top_k: int = 5) -> list[list]:
        """An image ranks candidate report texts (one a line): rows ``[rank, text, cosine similarity]``."""
        self._require_embedding()
        candidates = split_lines(texts)
        if not candidates:
            raise DemoInputError("type the candidate texts, one a line")
        if len(candidates) > MAX_GALLERY:
            raise DemoInputError(f"{len(candidates)} candidate texts; the demo ranks at most {MAX_GALLERY}")
        image = self.load_image(image_path)
        with self._lock:
            ranked = self.predictor.retrieve(image, candidates, top_k=self.check_top_k(top_k), direction="i2t")
        return [[r["rank"], candidates[r["index"]], round(r["score"], 4)] for r in ranked]

    # ------------------------------------------------------------------ zero-shot

    def default_labels(self) -> str:
        """The labels saved with a zero-shot model, comma-separated ("" when it has none)."""
        return ", ".join(self.predictor.classes) if self.predictor.classes else ""

    def default_template(self) -> str:
        return (self.predictor.model.task or {}).get("prompt") or DEFAULT_TEMPLATE

    def zero_shot(self, image_path: str | None, labels: str | None, template: str | None = None) -> dict[str, float]:
        """{label: probability} (most likely first) of ``labels`` (comma- or newline-separated)."""
        self._require_embedding()
        names = split_lines(labels, "\n,")
        if len(names) < 2:
            raise DemoInputError("give at least two labels, separated by commas or new lines")
        template = (template or "").strip() or self.default_template()
        if "{label}" not in template:
            raise DemoInputError(f"the prompt template must contain {{label}}, got {template!r}")
        image = self.load_image(image_path)
        with self._lock:
            return self.predictor.zero_shot(image, names, template)


def _short(error: Exception, limit: int = 160) -> str:
    text = str(error)
    return text if len(text) <= limit else text[: limit - 1] + "…"
