"""Manifest augmentation and image cache, weighted mixtures of pair sources, ``data.sources``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mpma.data.pairs as pairs_module
from mpma.config import Config, ConfigError, DataConfig, load_config
from mpma.data.image import load_image, to_tensor
from mpma.data.pairs import (
    ByteBudget,
    ManifestPairs,
    MixturePairs,
    PairCollator,
    SynthradPairs,
    cumulative_draws,
)
from mpma.data.sampling import EpochBatches, iterate_batches
from mpma.data.synthrad import SynthRad

S = 16


def write_manifest(folder: Path, n_train: int, n_val: int = 0, mode: str = "L",
                   sizes: tuple[tuple[int, int], ...] = ((40, 30),), word: str = "slice") -> Path:
    """A pre-training manifest of random-noise PNGs (``mode`` "L" or "RGB", (width, height) cycled)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_train + n_val):
        width, height = sizes[i % len(sizes)]
        shape = (height, width) if mode == "L" else (height, width, 3)
        array = np.random.default_rng([len(word), i]).integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(array).save(folder / f"{i}.png")
        split = "train" if i < n_train else "val"
        lines.append(json.dumps({"id": f"{word}-{i}", "image": f"{i}.png", "split": split,
                                 "text": f"{word} number {i} shows finding {i % 3}"}))
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def gray(tmp_path: Path) -> Path:
    """Grayscale images, one smaller than S and several non-square larger ones."""
    return write_manifest(tmp_path / "gray", 12, 4, "L", ((40, 30), (12, 9), (25, 64)), "ct")


@pytest.fixture
def rgb(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "rgb", 10, 0, "RGB", ((50, 64), (33, 20)), "photo")


# ------------------------------------------------------------------ manifest augmentation


def test_training_items_are_augmented_and_eval_items_are_not(gray: Path, rgb: Path) -> None:
    for manifest in (gray, rgb):
        train = ManifestPairs(manifest, "train", S, train=True, seed=0)
        first = train[0]["image"]
        assert first.shape == (3, S, S) and first.dtype == torch.float32
        train.set_epoch(1)
        assert not torch.equal(train[0]["image"], first)  # another epoch: another crop
        a = train.get(0, np.random.default_rng(1))["image"]
        b = train.get(0, np.random.default_rng(2))["image"]
        assert not torch.equal(a, b)
        held_out = ManifestPairs(manifest, "train", S)  # train=False: never augmented
        for i in range(len(held_out)):
            expected = to_tensor(load_image(held_out.paths[i]), S)
            assert torch.equal(held_out[i]["image"], expected)
            held_out.set_epoch(i)
            assert torch.equal(held_out[i]["image"], expected)


def test_augmentation_is_reproducible_across_instances(gray: Path) -> None:
    a, b = (ManifestPairs(gray, "train", S, train=True, seed=7) for _ in range(2))
    other = ManifestPairs(gray, "train", S, train=True, seed=8)
    for dataset in (a, b, other):
        dataset.set_epoch(3)
    for i in range(len(a)):
        assert torch.equal(a[i]["image"], b[i]["image"])
    assert any(not torch.equal(a[i]["image"], other[i]["image"]) for i in range(len(a)))


def test_cache_decodes_each_image_once_and_changes_no_output(gray: Path, monkeypatch) -> None:
    calls = []
    original = pairs_module.load_image  # the name ManifestPairs decodes with
    monkeypatch.setattr(pairs_module, "load_image", lambda path: calls.append(path) or original(path))
    cached = ManifestPairs(gray, "train", S, train=True, cache=2**20)
    uncached = ManifestPairs(gray, "train", S, train=True, cache=0)
    for epoch in range(3):
        cached.set_epoch(epoch)
        uncached.set_epoch(epoch)
        for i in range(len(cached)):
            assert torch.equal(cached[i]["image"], uncached[i]["image"])
    assert len(calls) == len(cached) + 3 * len(uncached)  # the cached copy decoded each image once
    assert all(image is not None and min(image.shape[:2]) <= S for image in cached._cache)


def test_cache_respects_its_byte_budget(gray: Path, rgb: Path) -> None:
    one = ManifestPairs(gray, "train", S, train=True).reduced_image(0).nbytes
    budget = ByteBudget(2 * one)  # shared: two grayscale images at most
    first = ManifestPairs(gray, "train", S, train=True, cache=budget)
    second = ManifestPairs(rgb, "train", S, train=True, cache=budget)
    assert first.fill_cache(threads=2) >= 1
    assert second.fill_cache() == 0
    assert budget.used <= budget.limit
    with pytest.raises(ValueError, match=">= 0"):
        ByteBudget(-1)


# ------------------------------------------------------------------ mixtures


@pytest.mark.parametrize("weights", [(1.0, 1.0), (3.0, 1.0), (0.2, 0.5, 0.3), (1.0, 1e-3)])
def test_cumulative_draws_stay_within_one_draw_of_the_shares(weights) -> None:
    shares = np.asarray(weights) / sum(weights)
    for phase in (0.0, 0.37, 0.999):
        previous = np.zeros(len(weights), dtype=np.int64)
        for total in range(0, 3000, 7):
            counts = cumulative_draws(weights, total, phase)
            assert counts.sum() == total and np.all(counts >= previous)
            assert np.all(np.abs(counts - shares * total) <= 1.0)
            previous = counts
    mean = np.mean([cumulative_draws(weights, 10, phase) for phase in np.linspace(0, 1, 1000, endpoint=False)], 0)
    assert np.allclose(mean, shares * 10, atol=2e-3)  # unbiased over the phase (1/1000 grid)


class Numbers:
    """A map-style stand-in source: item i of source s is {"source": s, "index": i}."""

    def __init__(self, source: int, n: int) -> None:
        self.source, self.n = source, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"source": self.source, "index": i}

    def texts(self) -> list[str]:
        return [f"s{self.source}-{i}" for i in range(self.n)]


def test_mixture_draws_follow_the_weights() -> None:
    sizes, weights = (50, 400, 7), (2.0, 1.0, 1.0)
    mixture = MixturePairs([Numbers(s, n) for s, n in enumerate(sizes)], weights, length=1000, seed=3)
    sampler = EpochBatches(len(mixture), 25, seed=3)
    drawn = np.zeros(3)
    seen = [set() for _ in sizes]
    for batch in iterate_batches(mixture, lambda items: items, sampler):
        for item in batch:
            drawn[item["source"]] += 1
            seen[item["source"]].add(item["index"])
        if drawn.sum() >= 4000:
            break
    assert np.allclose(drawn / drawn.sum(), np.asarray(weights) / sum(weights), atol=0.01)
    assert [len(s) for s in seen] == [50, 400, 7]  # every item of every source was drawn
    # a source's items are drawn evenly, across epoch boundaries too: source 1 (250 draws an epoch)
    # covers its 400 items once before repeating any
    tables = np.concatenate([mixture.table(epoch) for epoch in range(3)])
    for source, n in enumerate(sizes):
        drawn_from = np.bincount(tables[tables[:, 0] == source, 1], minlength=n)
        assert drawn_from.max() - drawn_from.min() <= 1, source
    for epoch in range(5):
        per_source = np.bincount(mixture.table(epoch)[:, 0])
        assert np.all(np.abs(per_source - np.array([500, 250, 250])) < 2)
    assert mixture.counts() == dict(zip(mixture.names, np.bincount(mixture._table[:, 0]).tolist()))


def test_mixture_tables_are_seeded_per_epoch() -> None:
    def make(seed: int) -> MixturePairs:
        return MixturePairs([Numbers(0, 9), Numbers(1, 5)], [1.0, 1.0], seed=seed)

    a, b = make(0), make(0)
    assert len(a) == 14  # default length: the sources' sizes summed
    assert np.array_equal(a.table(4), b.table(4))
    assert not np.array_equal(a.table(4), a.table(5))
    assert not np.array_equal(a.table(4), make(1).table(4))
    b.set_epoch(4)
    assert [b[p] for p in range(len(b))] == [{"source": int(s), "index": int(i)} for s, i in a.table(4)]


def test_mixture_texts_interleave_every_source() -> None:
    mixture = MixturePairs([Numbers(0, 3), Numbers(1, 1), Numbers(2, 2)], [1, 1, 1])
    assert mixture.texts() == ["s0-0", "s1-0", "s2-0", "s0-1", "s2-1", "s0-2"]


def test_mixture_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="one weight per source"):
        MixturePairs([Numbers(0, 3)], [1.0, 2.0])
    with pytest.raises(ValueError, match="extra: weight must be a positive"):
        MixturePairs([Numbers(0, 3), Numbers(1, 3)], [1.0, 0.0], names=["main", "extra"])
    with pytest.raises(ValueError, match="empty dataset"):
        MixturePairs([Numbers(0, 0)], [1.0])


def test_grayscale_and_rgb_sources_mix_in_one_batch(gray: Path, rgb: Path, tokenizer) -> None:
    sources = [ManifestPairs(gray, "train", S, train=True), ManifestPairs(rgb, "train", S, train=True)]
    mixture = MixturePairs(sources, [1.0, 1.0], length=40, seed=1)
    collate = PairCollator(tokenizer, 24)
    batches = iterate_batches(mixture, lambda items: (collate(items), {i["text"].split()[0] for i in items}),
                              EpochBatches(len(mixture), 8, seed=1))
    for _, (batch, words) in zip(range(5), batches):
        assert batch["images"].shape == (8, 3, S, S) and batch["images"].dtype == torch.float32
        assert torch.isfinite(batch["images"]).all() and batch["input_ids"].shape[0] == 8
        if words == {"ct", "photo"}:
            break
    else:
        pytest.fail("no batch held both grayscale and RGB items")


def _images(dataset, start: int, count: int, workers: int = 0) -> list[torch.Tensor]:
    sampler = EpochBatches(len(dataset), 4, seed=5)
    stream = iterate_batches(dataset, lambda items: torch.stack([i["image"] for i in items]), sampler,
                             start, workers)
    return [next(stream) for _ in range(count)]


def test_mixture_batches_replay_exactly_from_any_start(gray: Path, rgb: Path) -> None:
    def make() -> MixturePairs:
        sources = [ManifestPairs(gray, "train", S, train=True, seed=5),
                   ManifestPairs(rgb, "train", S, train=True, seed=5),
                   SynthradPairs(SynthRad(6, image_size=32), S)]
        return MixturePairs(sources, [1.0, 2.0, 0.5], length=18, seed=5)

    straight = _images(make(), 0, 10)  # 4 batches an epoch: crosses two epoch boundaries
    for start in (3, 4, 7):
        resumed = _images(make(), start, 10 - start)
        assert all(torch.equal(x, y) for x, y in zip(straight[start:], resumed))
    assert not torch.equal(straight[0], straight[4])


def test_worker_processes_see_the_epoch_and_the_filled_cache(gray: Path) -> None:
    dataset = ManifestPairs(gray, "train", S, train=True, seed=2, cache=2**20)
    assert dataset.fill_cache(threads=2) == len(dataset)
    in_workers = _images(dataset, 0, 6, workers=1)
    in_process = _images(ManifestPairs(gray, "train", S, train=True, seed=2), 0, 6)
    assert all(torch.equal(x, y) for x, y in zip(in_workers, in_process))


# ------------------------------------------------------------------ data.sources


def test_sources_entries_parse() -> None:
    config = load_config("tiny", ["data.sources=[a/m.jsonl@2, medpix:b.jsonl@0.5, synthrad]"])
    assert config.data.parsed_sources() == [("a/m.jsonl", 2.0), ("medpix:b.jsonl", 0.5), ("synthrad", 1.0)]
    assert DataConfig(sources=["x@y/m.jsonl@1e-1"]).parsed_sources() == [("x@y/m.jsonl", 0.1)]
    assert Config().data.sources is None


@pytest.mark.parametrize("sources, message", [
    ([], "empty list"),
    (["a.jsonl@0"], r"data.sources\[0\] 'a.jsonl@0': the weight must be a positive"),
    (["synthrad", "a.jsonl@-2"], r"data.sources\[1\] 'a.jsonl@-2': the weight must be a positive"),
    (["a.jsonl@inf"], "positive"),
    (["a.jsonl@heavy"], r"number after the last '@', got 'heavy'"),
    (["@1"], "empty SPEC"),
    (["a.jsonl@1", "a.jsonl@2"], "listed twice"),
])
def test_bad_sources_entries_are_config_errors(sources, message) -> None:
    with pytest.raises(ConfigError, match=message):
        DataConfig(sources=sources)


def test_sources_must_be_a_list() -> None:
    with pytest.raises(ConfigError, match="data.sources: expected a list"):
        load_config("tiny", ["data.sources=a.jsonl@1"])
    with pytest.raises(ConfigError, match="mixture_size"):
        load_config("tiny", ["data.mixture_size=-1"])


def _config(micro_config, *sources: str, extra: tuple[str, ...] = ()) -> Config:
    listed = ", ".join(sources)
    return micro_config(f"data.sources=[{listed}]", "data.batch_size=4", *extra)


def test_build_pretrain_data_mixes_sources(micro_config, gray: Path, rgb: Path) -> None:
    from mpma.pipelines.pretraining import build_pretrain_data

    config = _config(micro_config, f"{rgb}@1", f"ct:{gray}@3", "synthrad@1",
                     extra=("data.train_size=20", "run.eval_size=8", "data.mixture_size=50"))
    data = build_pretrain_data(config)
    assert isinstance(data.train, MixturePairs) and len(data.train) == 50
    assert sum(data.train.counts().values()) == 50
    assert list(data.train.counts().values())[1] in (29, 30, 31)  # weight 3 of 5
    # held-out: the first source with a 'val' split (the RGB manifest has none)
    assert isinstance(data.held_out, ManifestPairs) and data.held_out.manifest == gray
    assert not data.held_out.train and len(data.held_out) == 4
    texts = data.train.texts()
    assert texts[:3] == ["photo number 0 shows finding 0", "ct number 0 shows finding 0", texts[2]]
    assert len(texts) == 10 + 12 + 20
    assert data.train[0]["image"].shape == (3, 32, 32)
    # the tokenizer cache is keyed on the name: another mixture, another name
    names = {data.name}
    for sources, extra in [
        ([f"{rgb}@1", f"ct:{gray}@1", "synthrad@1"], ("data.train_size=20",)),  # other weights
        ([f"{rgb}@1", f"ct:{gray}@3", "synthrad@1"], ("data.train_size=20", "data.seed=1")),  # other reports
        ([f"{gray}@3", f"{rgb}@1"], ()),
        ([f"{rgb}@1", f"{gray}@3"], ()),  # order decides the held-out set and the text interleaving
    ]:
        names.add(build_pretrain_data(_config(micro_config, *sources, extra=extra)).name)
    assert len(names) == 5


def test_single_manifest_training_is_augmented(micro_config, gray: Path) -> None:
    from mpma.pipelines.pretraining import build_pretrain_data

    data = build_pretrain_data(micro_config(f"data.dataset={gray}", "data.num_workers=1"))
    assert isinstance(data.train, ManifestPairs) and data.train.train and not data.held_out.train
    assert all(image is not None for image in data.train._cache)  # filled for the worker processes
    assert data.name == f"manifest-{gray.resolve()}"


def test_bad_sources_fail_naming_the_entry(micro_config, gray: Path, tmp_path: Path) -> None:
    from mpma.data.sources.prepare import prepare
    from mpma.pipelines.pretraining import build_pretrain_data

    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(FileNotFoundError, match=r"data.sources\[1\] '.*nowhere.jsonl@2'"):
        build_pretrain_data(_config(micro_config, f"{gray}@1", f"{missing}@2"))
    with pytest.raises(FileNotFoundError, match=r"data.sources\[0\] 'medpx@1'"):
        build_pretrain_data(_config(micro_config, "medpx@1"))
    only_val = write_manifest(tmp_path / "v", 0, 3)
    with pytest.raises(ConfigError, match=r"data.sources\[1\] .*no records with split 'train'"):
        build_pretrain_data(_config(micro_config, f"{gray}@1", f"{only_val}@1"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "image": "x.png", "split": "train"}\n')
    with pytest.raises(ConfigError, match=r"data.sources\[0\] .*broken.jsonl:1: invalid pretrain record"):
        build_pretrain_data(_config(micro_config, f"{broken}@1"))
    # a packed folder streams: it cannot be mixed
    from tests import fixtures_releases as fx

    src = tmp_path / "src"
    for i in range(4):
        fx.jpeg(src / "images" / f"{i}.jpg", size=(20, 20), value=i)
    fx.write_csv(src / "pairs.csv", ["image", "report", "split"],
                 [[f"{i}.jpg", f"report {i}", "train"] for i in range(4)])
    options = {"image_root": "images", "text_column": "report", "split_column": "split"}
    prepare("generic", src, tmp_path / "packed", options=options, pack=True, image_size=16, workers=0,
            progress=False)
    with pytest.raises(ConfigError, match=r"data.sources\[1\] .*packed folder .* manifest.jsonl"):
        build_pretrain_data(_config(micro_config, f"{gray}@1", f"{tmp_path / 'packed'}@1"))


# ------------------------------------------------------------------ end to end


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_pretrain_on_two_manifests_and_resume_exactly(micro_overrides, gray: Path, rgb: Path,
                                                      tmp_path: Path, monkeypatch, capsys) -> None:
    """``mpma pretrain data.sources=[...]``: trains on both, checks retrieval on the first 'val'
    split, and a run killed after its step-2 checkpoint resumes to the same losses."""
    from mpma.cli import main
    from mpma.engine.trainer import Trainer

    overrides = [*micro_overrides, f"data.sources=[{gray}@1, ct-rgb:{rgb}@2]", "data.batch_size=4",
                 "data.mixture_size=12", "optim.steps=4", "optim.warmup_steps=1", "optim.lr=0.003",
                 "run.log_every=1", "run.checkpoint_every=2", "run.threads=1", "text.vocab_size=300"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(["pretrain", "--out", str(straight), "--no-progress", *overrides]) == 0
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["retrieval"]["n_pairs"] == 4  # the grayscale manifest's 'val' split
    saved = json.loads((straight / "config.json").read_text())["data"]
    assert saved["sources"] == [f"{gray}@1", f"ct-rgb:{rgb}@2"] and saved["mixture_size"] == 12

    original_save = Trainer.save

    def save_then_die(self):
        path = original_save(self)
        if self.step == 2:
            raise Interrupted
        return path

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(Interrupted):
        main(["pretrain", "--out", str(broken), "--no-progress", *overrides])
    monkeypatch.setattr(Trainer, "save", original_save)
    assert main(["pretrain", "--out", str(broken), "--resume", "--no-progress"]) == 0
    capsys.readouterr()

    def rows(run: Path) -> dict[int, dict]:
        return {r["step"]: r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())}

    a, b = rows(straight), rows(broken)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]  # 3 batches an epoch: step 4 is in epoch 1
    for step in (3, 4):
        for term in ("loss", "mlm", "mim", "global_align", "local_align", "itm"):
            assert b[step][term] == pytest.approx(a[step][term], rel=1e-5, abs=1e-6), (step, term)
