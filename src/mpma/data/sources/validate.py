"""Record and image checks shared by ``mpma data prepare`` and ``mpma data validate``.

Every record is checked for: a readable, non-empty image that decodes (JPEG, PNG incl. 16-bit,
DICOM through :func:`mpma.data.image.load_image`) to a non-zero size, non-blank text fields,
known labels and a unique id. A failed check is a :class:`Reject` (id, source, short reason,
detail); nothing stops on a bad record. Decoding is the slow part: :func:`check_images` runs it
in a process pool with a progress bar.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mpma.data.image import ImageError, ImageTooLargeError, load_image
from mpma.data.jsonl import iter_jsonl
from mpma.data.records import ManifestKind, Record, read_manifest, record_from_dict, resolve_image
from mpma.data.sources.adapters import make_adapter

POOL_MIN_IMAGES = 32  # below this, decoding in-process is faster than starting workers


@dataclass(frozen=True)
class Reject:
    """A record left out of a manifest, as written to ``rejects.jsonl``."""

    id: str
    source: str
    reason: str
    detail: str = ""

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "source": self.source, "reason": self.reason,
                           "detail": self.detail}, ensure_ascii=False)


@dataclass(frozen=True)
class ImageCheck:
    """Result of checking (and optionally packing) one image file.

    Attributes:
        path: The file checked.
        ok: Whether it decodes to a non-empty image.
        reason: Short reason when not ok (``"image missing"``, ``"image file empty"``,
            ``"image does not decode"``, ``"image has zero size"``, ``"image too large"``: more
            pixels than :func:`mpma.data.image.max_image_pixels`, refused before decoding).
        detail: The decoder's message.
        width: Decoded width in pixels.
        height: Decoded height in pixels.
        data: JPEG bytes of the image resized for packing, when requested.
    """

    path: str
    ok: bool
    reason: str = ""
    detail: str = ""
    width: int = 0
    height: int = 0
    data: bytes | None = field(default=None, repr=False)


def default_workers() -> int:
    """CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def encode_packed(array: Any, size: int, quality: int = 90) -> bytes:
    """JPEG bytes of a uint8 image whose shorter side is resized to ``size`` (never upscaled).

    Grayscale stays single-channel (smaller and faster to decode); colour is RGB.
    """
    image = Image.fromarray(array if array.ndim == 2 else array[:, :, :3])
    short = min(image.size)
    if short > size:
        scale = size / short
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def check_image(path: str, pack_size: int | None = None, quality: int = 90) -> ImageCheck:
    """Check that ``path`` is a decodable, non-empty image; optionally return packed bytes.

    Never raises for a bad file: the problem is described in the result.
    """
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return ImageCheck(path, False, "image missing", f"{path} not found")
    except OSError as exc:
        return ImageCheck(path, False, "image missing", f"{path}: {exc}")
    if size == 0:
        return ImageCheck(path, False, "image file empty", f"{path} has 0 bytes")
    try:
        array = load_image(path)
    except ImageTooLargeError as exc:  # refused from its header: nothing was decoded
        return ImageCheck(path, False, "image too large", str(exc))
    except ImageError as exc:
        reason = "image has zero size" if "zero size" in str(exc) else "image does not decode"
        return ImageCheck(path, False, reason, str(exc))
    except Exception as exc:  # noqa: BLE001 - a decoder bug must not stop the run
        return ImageCheck(path, False, "image does not decode", f"{path}: {type(exc).__name__}: {exc}")
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        return ImageCheck(path, False, "image has zero size", f"{path}: shape {array.shape}")
    data = encode_packed(array, pack_size, quality) if pack_size else None
    return ImageCheck(path, True, width=width, height=height, data=data)


def _check_star(args: tuple[str, int | None, int]) -> ImageCheck:
    return check_image(*args)


def check_images(paths: Sequence[str], *, pack_size: int | None = None, quality: int = 90,
                 workers: int | None = None, progress: bool = True,
                 desc: str = "checking images") -> Iterator[ImageCheck]:
    """Check many images, in order, in a process pool (``workers`` processes) with a progress bar.

    Args:
        paths: Image files.
        pack_size: Also return JPEG bytes resized to this shorter side.
        quality: JPEG quality of packed bytes.
        workers: Processes (default: all usable CPUs); ``0``/``1`` decodes in this process.
        progress: Show a tqdm bar on stderr.
        desc: Bar label.

    Yields:
        One :class:`ImageCheck` per path, in the order of ``paths``.
    """
    from tqdm import tqdm

    workers = default_workers() if workers is None else workers
    jobs = [(p, pack_size, quality) for p in paths]
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress or not jobs,
               dynamic_ncols=True)
    try:
        if workers <= 1 or len(jobs) < POOL_MIN_IMAGES:
            for job in jobs:
                yield _check_star(job)
                bar.update()
            return
        context = multiprocessing.get_context("spawn")  # safe with threads/torch in the parent
        with context.Pool(min(workers, len(jobs))) as pool:
            chunk = max(1, min(16, len(jobs) // (workers * 8)))
            for result in pool.imap(_check_star, jobs, chunksize=chunk):
                yield result
                bar.update()
    finally:
        bar.close()


def record_problem(record: Record, known_labels: Iterable[str] | None) -> tuple[str, str] | None:
    """Content problem of a record (``(reason, detail)``), or ``None`` when it is fine."""
    for name in ("text", "question", "answer"):
        value = getattr(record, name, None)
        if value is not None and not " ".join(str(value).split()):
            return f"empty {name}", f"{name} is blank after cleaning"
    labels = getattr(record, "labels", None)
    if labels is not None and known_labels is not None:
        known = set(known_labels)
        unknown = [label for label in labels if label not in known]
        if unknown:
            return "unknown label", f"{unknown} not in {sorted(known)}"
    return None


def infer_kind(manifest: str | os.PathLike[str]) -> ManifestKind:
    """Kind of a manifest: from ``prepare.json`` next to it, else from its first record's fields."""
    manifest = Path(manifest)
    info = manifest.parent / "prepare.json"
    if info.is_file():
        kind = json.loads(info.read_text(encoding="utf-8")).get("kind")
        if kind in ("pretrain", "vqa", "classification"):
            return kind
    for _, data, _ in iter_jsonl(manifest):
        if data is not None:
            return "vqa" if "question" in data else ("classification" if "labels" in data else "pretrain")
    raise ValueError(f"{manifest}: no record to infer the kind from; pass --kind")


def _prepared_labels(manifest: Path) -> tuple[str, ...] | None:
    """Label set of the dataset named in the ``prepare.json`` next to ``manifest``, if any."""
    info = manifest.parent / "prepare.json"
    if not info.is_file():
        return None
    data = json.loads(info.read_text(encoding="utf-8"))
    try:
        return make_adapter(data["dataset"], data.get("user_options")).label_set()
    except (KeyError, ValueError, TypeError):
        return None


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_manifest`."""

    kind: str
    total: int
    kept: int
    rejects: list[Reject]

    def counts(self) -> Counter[str]:
        return Counter(r.reason for r in self.rejects)


def validate_manifest(manifest: str | os.PathLike[str], kind: ManifestKind | None = None, *,
                      known_labels: Iterable[str] | None = None, images: bool = True,
                      workers: int | None = None, progress: bool = True) -> ValidationReport:
    """Check every line of a manifest, collecting all problems instead of stopping at the first.

    Args:
        manifest: JSONL manifest.
        kind: Record kind (default: :func:`infer_kind`).
        known_labels: Accepted labels (default: the label set of the dataset recorded in a
            ``prepare.json`` next to the manifest; none when there is none).
        images: Also check that every image decodes.
        workers: Decoding processes (see :func:`check_images`).
        progress: Show a progress bar.

    Returns:
        Counts and one :class:`Reject` per problem (``source`` = ``manifest:line``).

    Raises:
        FileNotFoundError: The manifest does not exist.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest}")
    kind = kind or infer_kind(manifest)
    if known_labels is None:
        known_labels = _prepared_labels(manifest)
    total, rejects, good = _check_lines(manifest, kind, known_labels)
    if images:
        rejects += _manifest_image_rejects(manifest, good, workers, progress)
    return ValidationReport(kind, total, total - len(rejects), rejects)


def _check_lines(manifest: Path, kind: ManifestKind, known_labels: Iterable[str] | None,
                 ) -> tuple[int, list[Reject], list[tuple[Record, str]]]:
    """Parse and check every non-blank line of ``manifest`` (all but the images).

    Returns:
        (non-blank lines, one :class:`Reject` per invalid record, duplicate id or content problem,
        the ``(record, "manifest:line")`` pairs that passed).
    """
    rejects: list[Reject] = []
    good: list[tuple[Record, str]] = []
    seen: dict[str, str] = {}
    total = 0
    for lineno, data, problem in iter_jsonl(manifest):
        total += 1
        where = f"{manifest.name}:{lineno}"
        if data is None:  # not UTF-8, not JSON or not an object: reported, the next lines are checked
            reason = "line not UTF-8" if problem.startswith("not UTF-8") else "invalid record"
            rejects.append(Reject(where, where, reason, f"line {lineno}: {problem}"))
            continue
        try:
            record = record_from_dict(data, kind)
        except (ValueError, TypeError) as exc:
            rejects.append(Reject(str(data.get("id", where)), where, "invalid record", str(exc)))
            continue
        if record.id in seen:
            rejects.append(Reject(record.id, where, "duplicate id", f"first at {seen[record.id]}"))
            continue
        seen[record.id] = where
        content = record_problem(record, known_labels)
        if content:
            rejects.append(Reject(record.id, where, *content))
            continue
        good.append((record, where))
    return total, rejects, good


def _manifest_image_rejects(manifest: Path, good: list[tuple[Record, str]], workers: int | None,
                            progress: bool) -> list[Reject]:
    """One :class:`Reject` per record of ``good`` whose image (resolved against ``manifest``) fails
    :func:`check_images`, in ``good``'s order; each distinct image is decoded once."""
    rejects: list[Reject] = []
    with_image = [(r, w) for r, w in good if getattr(r, "image", None)]
    paths = sorted({str(resolve_image(manifest, r)) for r, _ in with_image})
    bad = {c.path: c for c in check_images(paths, workers=workers, progress=progress)
           if not c.ok}
    for record, where in with_image:
        check = bad.get(str(resolve_image(manifest, record)))
        if check is not None:
            rejects.append(Reject(record.id, where, check.reason, check.detail))
    return rejects


def _lengths(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"min": ordered[0], "median": pick(0.5), "mean": round(sum(ordered) / len(ordered), 1),
            "p95": pick(0.95), "max": ordered[-1]}


def manifest_stats(manifest: str | os.PathLike[str], kind: ManifestKind | None = None,
                   top: int = 15) -> dict[str, Any]:
    """Counts of a manifest: records per split, text lengths in words, answer types and answers
    (vqa), label frequencies (classification). Reads with :func:`~mpma.data.records.read_manifest`.
    """
    kind = kind or infer_kind(manifest)
    records = read_manifest(manifest, kind)
    stats: dict[str, Any] = {"manifest": str(manifest), "kind": kind, "records": len(records),
                             "splits": dict(Counter(r.split for r in records))}
    fields = {"pretrain": ("text",), "vqa": ("question", "answer"),
              "classification": ("text", "text_pair")}[kind]
    stats["words"] = {name: _lengths([len(str(getattr(r, name)).split()) for r in records
                                      if getattr(r, name, None)]) for name in fields}
    if kind == "vqa":
        stats["answer_types"] = {s: dict(Counter(r.answer_type for r in records if r.split == s))
                                 for s in stats["splits"]}
        answers = Counter(r.answer for r in records)
        stats["distinct_answers"] = len(answers)
        stats["top_answers"] = dict(answers.most_common(top))
    if kind == "classification":
        stats["labels"] = {s: dict(Counter(label for r in records if r.split == s
                                           for label in (r.labels or ("(none)",))).most_common())
                           for s in stats["splits"]}
    return stats
