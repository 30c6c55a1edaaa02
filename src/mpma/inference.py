"""Inference API: answer questions, embed, retrieve, zero-shot and classify with a saved mpma model.

    from mpma.inference import Predictor

    predictor = Predictor.from_pretrained("runs/vqa")          # a model folder or a fine-tuning run folder
    predictor.answer("chest.png", "is there a nodule?", top_k=3)
    # [{'answer': 'yes', 'probability': 0.91}, {'answer': 'no', 'probability': 0.07}, ...]

Images may be paths (JPEG, PNG incl. 16-bit, DICOM), PIL images or numpy arrays ((H, W), (H, W, 3),
(H, W, 4) or (3, H, W); uint8, or floats in [0, 1], or any other range mapped min-max to 0..255). They
are pre-processed exactly like evaluation images (resize to the model's size, CLIP mean/std). Every
method takes one input or a list; lists are processed in batches of ``batch_size`` under
``torch.inference_mode``. The device is chosen automatically (CUDA when available) unless given.

Inputs are checked first: an empty or whitespace-only question or text, and a ``top_k`` that is not
a positive integer, are ``ValueError``s. A ``top_k`` above the number of answers (or candidates)
returns them all, best first: asking for "the best 10" of 5 answers is not an error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mpma.data.image import image_to_array, to_tensor  # image_to_array re-exported for users
from mpma.data.text import encode_with_answer_slot, tokenize
from mpma.hub import PretrainedModel, load_model
from mpma.tasks.base import get_task

ImageInput = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray | torch.Tensor


def _is_image_path(value: Any) -> bool:
    return isinstance(value, os.PathLike) or (isinstance(value, str) and Path(value).suffix != "" and Path(value).exists())


def _check_top_k(top_k: Any) -> int:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer (how many results to return), got {top_k!r}")
    return top_k


def _check_texts(texts: list, kind: str) -> None:
    """Every item is a string with a word in it (``kind``: "question", "text", ... for the message)."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{kind} {i} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{kind} {i} is empty ({text!r}); give a non-empty {kind}" if len(texts) > 1 else
                             f"the {kind} is empty ({text!r}); give a non-empty {kind}")


def _as_list(value: Any, kind: str) -> tuple[list, bool]:
    """(items, was_single). A str, a path or an image object is one item; lists/tuples are many."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"no {kind} given")
        return list(value), False
    return [value], True


class Predictor:
    """Inference on a loaded model (see :func:`mpma.hub.load_model`).

    Args:
        model: a :class:`PretrainedModel`.
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", ...
        batch_size: images/texts per forward pass.
    """

    def __init__(self, model: PretrainedModel, device: str | torch.device = "auto", batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model
        self.batch_size = batch_size
        self.module = model.module.to(self.device).eval()
        self.backbone = model.backbone
        self.tokenizer = model.tokenizer
        self.image_size = int(model.preprocess["image_size"])
        self.mean = tuple(model.preprocess["mean"])
        self.std = tuple(model.preprocess["std"])
        self.max_length = int(model.preprocess["max_length"])

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "auto", batch_size: int = 32,
                        max_params: int | None = None) -> Predictor:
        """Open a save_pretrained folder, a fine-tuning run or a pre-training run folder (``max_params``: refuse a
        folder that describes a larger model, before it is allocated)."""
        return cls(load_model(path, max_params=max_params), device, batch_size)

    @property
    def task(self) -> str | None:
        return self.model.task["task"] if self.model.task else None

    @property
    def classes(self) -> list[str]:
        return list(self.model.task.get("classes") or []) if self.model.task else []

    # ------------------------------------------------------------------ inputs

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Images -> (N, 3, S, S) normalised float tensor on the CPU."""
        return torch.stack([to_tensor(image_to_array(image), self.image_size, self.mean, self.std) for image in images])

    def _tokens(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be strings")
        encoded = tokenize(self.tokenizer, texts, self.max_length, pairs)
        return {"input_ids": encoded["input_ids"].to(self.device), "attention_mask": encoded["attention_mask"].to(self.device)}

    def _chunks(self, n: int):
        for start in range(0, n, self.batch_size):
            yield start, min(n, start + self.batch_size)

    @property
    def reads_image(self) -> bool:
        """The model's task head reads an image (False for a backbone)."""
        return self.task is not None and get_task(self.task).reads_image

    @property
    def reads_text(self) -> bool:
        """The model's task head reads a text (False for a backbone)."""
        return self.task is not None and bool(get_task(self.task).text_fields)

    @property
    def can_answer(self) -> bool:
        """The model has a trained head that answers questions about images (:meth:`answer` works)."""
        spec = get_task(self.task) if self.task is not None else None
        return spec is not None and spec.trains and spec.target == "answer"

    @property
    def can_embed(self) -> bool:
        """The backbone kept its GLA-global alignment head (:meth:`retrieve` and :meth:`zero_shot` work)."""
        return bool(self.backbone.has_global_alignment)

    def _require(self, target: str, what: str) -> None:
        """The model must have a trained head predicting ``target`` ("answer" or "labels")."""
        spec = get_task(self.task) if self.task is not None else None
        if spec is None or not spec.trains or spec.target != target:
            raise ValueError(f"this model's task is {self.task or 'none (a backbone)'}; this call needs a model "
                             f"fine-tuned for {what}")

    def _require_alignment(self) -> None:
        if not self.backbone.has_global_alignment:
            raise ValueError("this model has no GLA-global alignment head (pre-trained with objectives.global_align=0): "
                             "embeddings, retrieval and zero-shot need one")

    # ------------------------------------------------------------------ embeddings

    @torch.inference_mode()
    def embed_image(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """L2-normalised GLA-global image embeddings (N, A) on the CPU (N = 1 for a single image)."""
        self._require_alignment()
        items, _ = _as_list(images, "images")
        out = []
        for start, end in self._chunks(len(items)):
            pixels = self.preprocess(items[start:end]).to(self.device)
            out.append(self.backbone.embed_image(pixels).float().cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def embed_text(self, texts: str | Sequence[str]) -> torch.Tensor:
        """L2-normalised GLA-global text embeddings (N, A) on the CPU."""
        self._require_alignment()
        items, _ = _as_list(texts, "texts")
        _check_texts(items, "text")
        out = []
        for start, end in self._chunks(len(items)):
            batch = self._tokens(items[start:end])
            out.append(self.backbone.embed_text(batch["input_ids"], batch["attention_mask"]).float().cpu())
        return torch.cat(out)

    def retrieve(self, query: ImageInput | str, candidates: Sequence, top_k: int = 5,
                 direction: str | None = None) -> list[dict]:
        """Rank ``candidates`` by cosine similarity to ``query``.

        Args:
            query: a text (text -> image: candidates are images) or an image (image -> text: candidates are texts).
            candidates: images or texts, or a precomputed (M, A) embedding tensor.
            top_k: how many to return (a positive integer; more than there are candidates returns them all).
            direction: "t2i" or "i2t"; None decides from the query (a string that is not an existing file is a text).

        Returns:
            up to ``top_k`` ``{"rank", "index", "score"}`` dicts, best first, with ``"candidate"`` (the text or
            path) when the candidate is a string or path.
        """
        _check_top_k(top_k)
        if direction is None:
            direction = "t2i" if isinstance(query, str) and not _is_image_path(query) else "i2t"
        if direction not in ("t2i", "i2t"):
            raise ValueError(f"direction must be 't2i' or 'i2t', got {direction!r}")
        query_embed = self.embed_text(query) if direction == "t2i" else self.embed_image(query)
        if isinstance(candidates, torch.Tensor):
            candidate_embed = F.normalize(candidates.float(), dim=-1)
        else:
            candidates = list(candidates)
            candidate_embed = self.embed_image(candidates) if direction == "t2i" else self.embed_text(candidates)
        scores = (query_embed[0] @ candidate_embed.t())
        k = min(top_k, scores.shape[0])
        values, indices = scores.topk(k)
        result = []
        for rank, (score, index) in enumerate(zip(values.tolist(), indices.tolist()), 1):
            item = {"rank": rank, "index": index, "score": score}
            if not isinstance(candidates, torch.Tensor) and isinstance(candidates[index], (str, os.PathLike)):
                item["candidate"] = str(candidates[index])
            result.append(item)
        return result

    # ------------------------------------------------------------------ zero-shot

    @torch.inference_mode()
    def zero_shot(self, image: ImageInput | Sequence[ImageInput], labels: Sequence[str] | None = None,
                  template: str | None = None) -> dict[str, float] | list[dict[str, float]]:
        """Label probabilities: softmax over labels of the scaled cosine similarity to ``template.format(label=...)``.

        ``labels`` and ``template`` default to those saved with a zero-shot model (else the fine-tuning default
        prompt "a chest radiograph showing {label}"). Returns {label: probability}, most likely first (a list
        of such dicts for a list of images).
        """
        self._require_alignment()
        labels = list(labels) if labels is not None else self.classes
        if not labels:
            raise ValueError("zero_shot needs labels (this model has none saved)")
        if template is None:
            template = (self.model.task or {}).get("prompt") or "a chest radiograph showing {label}"
        if "{label}" not in template:
            raise ValueError(f"the template must contain '{{label}}', got {template!r}")
        label_embed = self.embed_text([template.format(label=label) for label in labels])
        images, single = _as_list(image, "images")
        scale = float(self.backbone.align.logit_scale())
        probs = (scale * self.embed_image(images) @ label_embed.t()).softmax(-1)
        result = [_ranked(labels, row) for row in probs]
        return result[0] if single else result

    # ------------------------------------------------------------------ task heads

    @torch.inference_mode()
    def _head_scores(self, images: list | None, texts: list[str] | None, pairs: list[str] | None = None) -> torch.Tensor:
        n = len(images if images is not None else texts)
        out = []
        for start, end in self._chunks(n):
            batch: dict[str, torch.Tensor] = {}
            if images is not None:
                batch["images"] = self.preprocess(images[start:end]).to(self.device)
            if texts is not None and getattr(self.module, "pool", None) == "slot":  # a [MASK] slot after the text
                encoded = encode_with_answer_slot(self.tokenizer, texts[start:end], self.max_length,
                                                  pairs[start:end] if pairs else None)
                batch.update({key: value.to(self.device) for key, value in encoded.items()})
            elif texts is not None:
                batch.update(self._tokens(texts[start:end], pairs[start:end] if pairs else None))
            out.append(self.module.predict(batch).float().cpu())
        return torch.cat(out)

    def _probabilities(self, logits: torch.Tensor, sigmoid: bool) -> torch.Tensor:
        return logits.sigmoid() if sigmoid else logits.softmax(-1)

    def answer(self, image: ImageInput | Sequence[ImageInput], question: str | Sequence[str],
               top_k: int = 5) -> list[dict] | list[list[dict]]:
        """Answer questions about images with a VQA model.

        Args:
            image: one image or a list (one image with several questions is repeated).
            question: one question or a list as long as the images.
            top_k: answers returned per question (a positive integer; above the number of answers the model
                knows, all of them are returned).

        Returns:
            ``[{"answer", "probability"}, ...]`` best first (a list of such lists for several questions).
            Probabilities are a softmax over the answer vocabulary for a CE-trained head, and independent
            sigmoid scores (M3AE's soft-score BCE) for a BCE-trained head.
        """
        self._require("answer", "vqa")
        _check_top_k(top_k)
        questions, single = _as_list(question, "questions")
        _check_texts(questions, "question")
        images, _ = _as_list(image, "images")
        if len(images) == 1 and len(questions) > 1:
            images = images * len(questions)
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        probs = self._probabilities(self._head_scores(images, questions), self.model.task["head"].get("loss") == "bce")
        result = [_top(self.classes, row, top_k, "answer") for row in probs]
        return result[0] if single else result

    def classify(self, image: ImageInput | Sequence[ImageInput] | None = None, text: str | Sequence[str] | None = None,
                 text_pair: str | Sequence[str] | None = None) -> dict[str, float] | list[dict[str, float]]:
        """Label probabilities from a classification head (img_cls: image; txt_cls: text[, text_pair]; mm_cls: both).

        Returns {label: probability}, most likely first (softmax; independent sigmoids for multi-label heads),
        or a list of such dicts for list inputs.
        """
        self._require("labels", "a classification task (img_cls, txt_cls or mm_cls)")
        needs_image, needs_text = self.reads_image, self.reads_text
        if needs_image and image is None:
            raise ValueError(f"a {self.task} model needs an image")
        if needs_text and text is None:
            raise ValueError(f"a {self.task} model needs a text")
        images, single = _as_list(image, "images") if needs_image else (None, True)
        texts, text_single = _as_list(text, "texts") if needs_text else (None, True)
        single = single and text_single
        pairs = _as_list(text_pair, "text pairs")[0] if (text_pair is not None and needs_text) else None
        if texts is not None:
            _check_texts(texts, "text")
        if pairs is not None:
            _check_texts(pairs, "text pair")
        if images is not None and texts is not None and len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        probs = self._probabilities(self._head_scores(images, texts, pairs), bool(self.model.task.get("multi_label")))
        result = [_ranked(self.classes, row) for row in probs]
        return result[0] if single else result


def _ranked(labels: list[str], probs: torch.Tensor) -> dict[str, float]:
    order = probs.argsort(descending=True).tolist()
    return {labels[i]: float(probs[i]) for i in order}


def _top(labels: list[str], probs: torch.Tensor, k: int, name: str) -> list[dict]:
    values, indices = probs.topk(min(k, probs.shape[0]))
    return [{name: labels[i], "probability": float(v)} for v, i in zip(values.tolist(), indices.tolist())]
