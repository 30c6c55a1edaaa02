"""Figure-caption releases for pre-training: ROCO and MedICaT."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mpma.data.sources.adapters.base import Adapter, Item, LayoutError, clean_text, hash_split, read_csv
from mpma.data.sources.published import Published

_ROCO_SPLITS = {"train": "train", "validation": "val", "test": "test"}


@dataclass
class RocoAdapter(Adapter):
    """ROCO (Pelka et al. 2018): PubMed Central figures with captions.

    One pre-training record per caption line; ``id`` = ROCO id. The image file is the
    ``PMC_ID`` column of ``licences.txt``; a mirror that names images ``<ROCO_ID>.jpg`` is
    accepted too. A missing split folder is skipped (the public repository ships text for
    validation/test only; images come from the download script).

    Attributes:
        subset: ``radiology`` or ``non-radiology``.
        min_words: Captions with fewer words are excluded (M3AE used 3); 0 keeps all.
    """

    subset: str = "radiology"
    min_words: int = 0

    name = "roco"
    kind = "pretrain"
    source = "github.com/razorx89/roco-dataset (images via its download script); per-image CC"
    layout = """<src>/data/{train,validation,test}/radiology/
    captions.txt      ROCO_ID<TAB>caption
    licences.txt      CSV ROCO_ID,PMC_ID,CC  (PMC_ID = image file name)
    images/<PMC_ID>   (or images/<ROCO_ID>.jpg)"""
    published = (Published(
        {"val": 8180, "test": 8179}, unit="captions", conditions={"subset": "radiology"},
        source="razorx89/roco-dataset data/{validation,test}/radiology/captions.txt (lines of "
               "the release files)",
        note="no train count registered: Pelka et al. 2018 give 81,825 radiology images in all "
             "(unverified), and the public repository ships no train captions"),)

    def _root(self, src: Path) -> Path:
        return src / "data" if (src / "data").is_dir() else src

    def check(self, src: Path) -> None:
        root = self._root(src)
        found = [s for s in _ROCO_SPLITS if (root / s / self.subset / "captions.txt").is_file()]
        if not found:
            raise LayoutError(f"{src} does not look like the ROCO release: no "
                              f"data/<split>/{self.subset}/captions.txt for any split of "
                              f"{list(_ROCO_SPLITS)}. Expected:\n{self.layout}")

    def items(self, src: Path) -> Iterator[Item]:
        root = self._root(src)
        for folder, split in _ROCO_SPLITS.items():
            base = root / folder / self.subset
            captions = base / "captions.txt"
            if not captions.is_file():
                continue
            files: dict[str, tuple[str, str]] = {}
            if (base / "licences.txt").is_file():
                for _, row in read_csv(base / "licences.txt", ("ROCO_ID", "PMC_ID")):
                    files[row["ROCO_ID"].strip()] = (row["PMC_ID"].strip(), row.get("CC", ""))
            images = base / "images"
            present = set(os.listdir(images)) if images.is_dir() else set()
            rel = captions.relative_to(src)
            with captions.open(encoding="utf-8-sig") as handle:
                for lineno, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    where = f"{rel}:{lineno}"
                    if "\t" not in line:
                        yield Item(where, where, reason="malformed line", split=split,
                                   detail="expected ROCO_ID<TAB>caption")
                        continue
                    roco_id, caption = (p.strip() for p in line.split("\t", 1))
                    yield self._item(roco_id, caption, where, split, images, files, present)

    def _item(self, roco_id: str, caption: str, where: str, split: str, images: Path,
              files: dict[str, tuple[str, str]], present: set[str]) -> Item:
        pmc_file, license_ = files.get(roco_id, ("", ""))
        name = pmc_file or f"{roco_id}.jpg"
        if name not in present and f"{roco_id}.jpg" in present:
            name = f"{roco_id}.jpg"
        caption = clean_text(caption)
        if caption and len(caption.split()) < self.min_words:
            return Item(roco_id, where, excluded=True, split=split,
                        reason=f"caption under {self.min_words} words")
        meta = {"pmc_file": pmc_file, "license": license_} if pmc_file else {}
        return self.make(roco_id, where, image=os.path.join(images, name), text=caption,
                         split=split, meta=meta)


@dataclass
class MedicatAdapter(Adapter):
    """MedICaT (Subramanian et al. 2020): PMC figures with captions and inline references.

    One record per figure; ``id`` = ``<pdf_hash>_<fig_uri>`` (the image file name). The release
    has no split: papers are assigned to train/val/test by a hash of ``pdf_hash`` (all figures of
    one paper in one split).

    Attributes:
        radiology_only: Keep only figures flagged ``radiology`` (as M3AE did).
        with_references: Append the inline references (``s2orc_references``) to the caption.
        val_fraction: Fraction of papers in ``val``.
        test_fraction: Fraction of papers in ``test``.
    """

    radiology_only: bool = True
    with_references: bool = False
    val_fraction: float = 0.02
    test_fraction: float = 0.02

    name = "medicat"
    kind = "pretrain"
    source = "github.com/allenai/medicat (access form); per-article open licenses, non-commercial"
    layout = """<src>/release/   (or <src> itself)
    s2_full_figures_oa_nonroco_combined_medical_top4_public.jsonl
        one JSON object a line: pdf_hash, fig_uri, s2_caption, s2orc_references, radiology
    figures/<pdf_hash>_<fig_uri>"""
    FILE = "s2_full_figures_oa_nonroco_combined_medical_top4_public.jsonl"
    published = (Published(
        {"total": 217060}, unit="figures",
        source="allenai/medicat README: 217,060 figures from 131,410 open-access papers "
               "(Subramanian et al., Findings of EMNLP 2020)",
        note="no official split (hashed by paper here); radiology_only=true keeps the "
             "radiology figures only, as M3AE did"),)

    def _root(self, src: Path) -> Path:
        return src / "release" if (src / "release" / self.FILE).exists() else src

    def check(self, src: Path) -> None:
        root = self._root(src)
        prefix = "release/" if root != src else ""
        self.require(src, prefix + self.FILE, prefix + "figures")

    def items(self, src: Path) -> Iterator[Item]:
        root = self._root(src)
        path = root / self.FILE
        rel = path.relative_to(src)
        with path.open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{rel}:{lineno}"
                try:
                    entry = json.loads(line)
                    pdf_hash, fig_uri = str(entry["pdf_hash"]), str(entry["fig_uri"])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    yield Item(where, where, reason="malformed line",
                               detail=f"need a JSON object with pdf_hash and fig_uri ({exc})")
                    continue
                record_id = f"{pdf_hash}_{fig_uri}"
                split = hash_split(pdf_hash, self.val_fraction, self.test_fraction, "medicat")
                if self.radiology_only and not entry.get("radiology"):
                    yield Item(record_id, where, excluded=True, reason="not a radiology figure",
                               split=split)
                    continue
                texts = [clean_text(entry.get("s2_caption"))]
                if self.with_references:
                    texts += [clean_text(t) for t in entry.get("s2orc_references") or []]
                yield self.make(record_id, where, image=str(root / "figures" / record_id),
                                text=" ".join(t for t in texts if t), split=split,
                                meta={"pdf_hash": pdf_hash, "radiology": bool(entry.get("radiology"))})
