"""synthrad: a seeded, procedural chest-radiograph-like dataset with known ground truth.

Each case has a set of 0-``max_findings`` findings (kind, side, zone, size;
uniform over the 17 allowed (kind, side, zone) :data:`COMBOS`, no two sharing
(kind, side), ``normal_fraction`` of cases normal), a grayscale image showing
them with one box per finding, a short free-text report, VQA pairs, multi-hot
labels over :data:`LABELS` and a retrieval key (:func:`finding_key`: sorted
``kind:side:zone``, size ignored; 142 distinct keys exist with
``max_findings=2``, "normal" included).

Anatomy/finding rules: nodule = small sharp round bright spot (radius >= 2.6 px
at any size); opacity = larger ill-defined blob blended toward soft-tissue
density inside the lung; effusion = lower zone only, basal fluid with a meniscus
rising laterally (costophrenic blunting); pneumothorax = upper zone only,
apical/lateral lucency without lung markings bounded by a bright pleural line;
cardiomegaly = side "center", zone "middle", heart widened to a
cardiothoracic ratio > 0.5 (normal hearts are ~0.4).

Image convention: a PA radiograph seen from the front, so the patient's
**right** side is on the image **left** (small x) and the patient's left on the
image right. The heart bulges to the patient's left (image right).

Rendering works in normalised thorax coordinates (u, v) in [-1, 1] (v grows
downwards), so any ``image_size >= 32`` works; a per-case affine (shift,
rotation, scale), exposure gradient, noise and a gamma/contrast/brightness LUT
make images with the same findings differ. Each finding's box ``(y0, x0, y1,
x1)`` (pixel coordinates, y1/x1 exclusive) bounds the pixels it changes by at
least 30 % of its peak effect (for cardiomegaly: the enlarged heart silhouette).

Randomness: findings come from ``np.random.default_rng([seed, index])``;
geometry, intensity and noise from ``[seed, index, 1]``; per-finding jitter from
``[seed, index, 2, kind, side]``; report and VQA wording from ``[seed, index, 4]``
(text pairs: ``[seed, index, 3]``). Rendering the same case with a different
``findings`` override therefore changes only the findings' pixels.

Modules: :mod:`~mpma.data.synthrad.text` (ground-truth types, finding sampling, reports, VQA and
text pairs), :mod:`~mpma.data.synthrad.render` (the image) and :mod:`~mpma.data.synthrad.dataset`
(cases, datasets, splits, export); this package re-exports their public names.
"""

from mpma.data.synthrad.dataset import (
    SYNTH_MANIFESTS, TEST_OFFSET, VAL_OFFSET, SynthRad, case_report, generate_case, synthrad_splits,
    write_synthrad,
)
from mpma.data.synthrad.render import render
from mpma.data.synthrad.text import (
    ALLOWED_LOCATIONS, COMBOS, FINDING_KINDS, LABELS, NEGATION_SENTENCES, NORMAL_SENTENCES,
    SIDES, SIZES, SYNONYMS, ZONE_WORDS, ZONES, Finding, SynthCase, VQAPair, build_report,
    build_vqa, entailment_label, finding_key, labels_for, sample_findings, text_pairs,
)

__all__ = [
    "ALLOWED_LOCATIONS", "COMBOS", "FINDING_KINDS", "LABELS", "NEGATION_SENTENCES",
    "NORMAL_SENTENCES", "SIDES", "SIZES", "SYNONYMS", "SYNTH_MANIFESTS", "TEST_OFFSET", "VAL_OFFSET",
    "ZONES", "ZONE_WORDS", "Finding", "VQAPair", "SynthCase", "SynthRad", "build_report", "build_vqa",
    "case_report", "entailment_label", "finding_key", "generate_case", "labels_for", "render",
    "sample_findings", "synthrad_splits", "text_pairs", "write_synthrad",
]
