"""``mpma pretrain``: build data, tokenizer, model and task from a Config; train; evaluate; summarise.

Run folder layout::

    config.json        the resolved configuration
    tokenizer/         the tokenizer the run used (a Hugging Face folder)
    log.jsonl          one line per logged step: every loss term, metrics, lr, samples/s
    curves.png         the log drawn at each checkpoint (``mpma visualize curves``)
    checkpoints/       step_<N>/: a model folder (mpma.hub) + the trainer's state.pt (atomic)
    summary.json       loss first/last means, the zero-shot retrieval check, bad_records (rejects.jsonl lists them)
    .lock              while a process writes into the folder (mpma.engine.run_folder.RunLock)

``--out`` is guarded (:func:`mpma.engine.run_folder.prepare_run_folder`): a folder holding another
run or other files is refused unless ``--overwrite``. ``--resume`` continues from the newest
checkpoint that can be read and accepts changes of ``optim.*`` / ``run.*`` (:func:`resume_config`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

from mpma.config import Config, ConfigError, config_from_dict
from mpma.data.bad_records import BadRecords, count_bad_records
from mpma.data.corpora import corpus_texts
from mpma.data.pairs import ByteBudget, ManifestPairs, MixturePairs, PairCollator, SynthradPairs, parse_data_spec
from mpma.data.sampling import CountingCollate, EpochBatches, iterate_batches
from mpma.data.shards import open_pairs
from mpma.data.synthrad import SynthRad
from mpma.data.text import (CORPUS_TOKENIZER_TEXTS, RUN_TOKENIZER_TEXTS, TextMasker, cached_tokenizer, load_tokenizer,
                            mask_weights)
from mpma.engine import checkpoint as ckpt
from mpma.engine import distributed
from mpma.engine.run_folder import PRETRAIN, RunLock, prepare_run_folder, resumable_run
from mpma.engine.threads import configure_threads
from mpma.engine.trainer import DivergenceError, Trainer, parameter_groups
from mpma.eval.retrieval import embed_dataset, retrieval_report
from mpma.hub import is_model_folder, save_pretrained
from mpma.hub.folder import pretrain_provenance, write_json
from mpma.models.factory import create_model
from mpma.pipelines.diagnostics import GroundingDiagnostics
from mpma.pipelines.resuming import record_config_change, resume_config
from mpma.pipelines.tracking import open_tracker, track_pretrain_checkpoint
from mpma.tasks.pretrain import PretrainTask
from mpma.viz.curves import write_run_curves


SYNTHRAD_CACHE_BYTES = 256 * 2**20  # image bytes of rendered synthrad training cases kept in memory


class PretrainData:
    """Train and held-out pair datasets plus the texts a tokenizer is trained on."""

    def __init__(self, train, held_out, name: str) -> None:
        self.train, self.held_out, self.name = train, held_out, name


def build_pretrain_data(config: Config) -> PretrainData:
    """synthrad (default), a pre-training manifest (``data.dataset=PATH`` or ``name:PATH``), or a
    weighted mixture of such sources (``data.sources=[SPEC@WEIGHT, ...]``).

    Manifest training images are augmented (random resized crop seeded by (seed, epoch, draw)) and
    kept decoded in memory within ``data.image_cache_mb``; held-out images never are augmented.
    A mixture's held-out set is that of its first source with a 'val' (or 'validation') split
    (synthrad always has one); a packed folder cannot be mixed (it streams), pass its manifest.
    """
    data = config.data
    budget = ByteBudget(data.image_cache_mb * 2**20)  # shared by every manifest source
    if data.sources is None:
        train, held_out, name = _open_source(config, data.dataset, budget)
    else:
        train, held_out, name = _open_mixture(config, budget)
    if data.num_workers > 0:  # workers are forked each epoch: fill the cache here, where it persists
        for dataset in getattr(train, "sources", [train]):
            if isinstance(dataset, ManifestPairs):
                dataset.fill_cache(threads=data.num_workers)
    return PretrainData(train, held_out, name)


def _open_source(config: Config, spec: str, budget: ByteBudget) -> tuple:
    """(train, held-out or None, name) of one source: synthrad, or a manifest / packed folder whose
    training images share the memory ``budget``."""
    data, size = config.data, config.vision.image_size
    name, path = parse_data_spec(spec)
    if name == "synthrad":
        return _open_synthrad(config)
    source = Path(path)
    train = open_pairs(source, "train", size, train=True, seed=data.seed, cache=budget, repeat=True)
    held_out = None
    for split in ("val", "validation"):
        try:
            held_out = open_pairs(source, split, size)
            break
        except ValueError:
            continue
    if held_out is not None and not isinstance(held_out, ManifestPairs):
        held_out = None  # a packed validation stream: the retrieval check reads map-style data only
    return train, held_out, f"manifest-{source.resolve()}"


def _open_synthrad(config: Config) -> tuple:
    """(train, held-out, "synthrad"): ``data.train_size`` synthrad pairs and the next ``run.eval_size``."""
    data, size = config.data, config.vision.image_size
    common = dict(seed=data.seed, image_size=size, normal_fraction=data.normal_fraction)
    # Keep rendered cases when they fit in SYNTHRAD_CACHE_BYTES: a default run draws each case ~2x,
    # so rendering is paid once per case.
    keep_all = -1 if data.train_size * size * size <= SYNTHRAD_CACHE_BYTES else 0
    train = SynthRad(data.train_size, offset=0, cache_size=keep_all, **common)
    held_out = SynthRad(config.run.eval_size, offset=data.train_size, **common)
    return SynthradPairs(train, size), SynthradPairs(held_out, size), "synthrad"


def _open_mixture(config: Config, budget: ByteBudget) -> tuple:
    """(MixturePairs of ``data.sources``, the first source's held-out set or None, "mixture:..." name).

    Raises:
        FileNotFoundError / ConfigError: a source that cannot be opened or mixed, naming its entry.
    """
    data = config.data
    trains, names, held_out = [], [], None
    for i, (spec, weight) in enumerate(data.parsed_sources()):
        where = f"data.sources[{i}] {data.sources[i]!r}"
        try:
            train, held, name = _open_source(config, spec, budget)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{where}: {error}") from None
        except ValueError as error:  # ManifestError, a missing split, ...
            raise ConfigError(f"{where}: {error}") from None
        if not isinstance(train, ManifestPairs | SynthradPairs):
            raise ConfigError(f"{where}: a packed folder streams its shards and cannot be mixed; "
                              "pass its manifest.jsonl instead")
        if name == "synthrad":  # its texts depend on these: the tokenizer cache must tell them apart
            name = f"synthrad-s{data.seed}-n{data.train_size}-f{data.normal_fraction:g}"
        trains.append(train)
        names.append(f"{name}@{weight:g}")
        held_out = held_out if held_out is not None else held
    weights = [weight for _, weight in data.parsed_sources()]
    train = MixturePairs(trains, weights, length=data.mixture_size or None, seed=data.seed, names=names)
    return train, held_out, "mixture:" + "+".join(names)


def build_tokenizer(config: Config, data: PretrainData):
    """``text.tokenizer`` if set, else a WordPiece tokenizer trained on the training texts (the first
    RUN_TOKENIZER_TEXTS) plus those of ``text.tokenizer_corpora`` (the first CORPUS_TOKENIZER_TEXTS of
    each), cached under a name that changes with any of them.

    Raises:
        FileNotFoundError / ConfigError: a missing or unreadable corpus, naming its entry.
    """
    if config.text.tokenizer or config.text.init:  # a pre-trained text encoder brings its own tokenizer
        return load_tokenizer(config.text.tokenizer or config.text.init)
    name = data.name
    if name != "synthrad":
        name = "manifest-" + hashlib.sha1(name.encode()).hexdigest()[:12]
    else:
        # the texts are the first reports of this synthrad configuration: key the cache on all that shapes them
        name = (f"synthrad-s{config.data.seed}-n{min(len(data.train), RUN_TOKENIZER_TEXTS)}"
                f"-f{config.data.normal_fraction:g}")
    extra: list[str] = []
    if config.text.tokenizer_corpora:
        digest = hashlib.sha1()
        for i, spec in enumerate(config.text.tokenizer_corpora):
            where = f"text.tokenizer_corpora[{i}] {spec!r}"
            try:
                texts = corpus_texts(spec.strip())[:CORPUS_TOKENIZER_TEXTS]
            except FileNotFoundError as error:
                raise FileNotFoundError(f"{where}: {error}") from None
            except ValueError as error:  # CorpusError, ManifestError
                raise ConfigError(f"{where}: {error}") from None
            extra += texts
            digest.update(f"{len(texts)}\x00".encode() + "\x00".join(texts).encode())
        name += f"+corpora-{digest.hexdigest()[:12]}"  # the texts themselves key the cache, not paths or mtimes
    return cached_tokenizer(name, lambda: data.train.texts()[:RUN_TOKENIZER_TEXTS] + extra, config.text.vocab_size)


def build_task(config: Config, tokenizer) -> PretrainTask:
    """The pre-training task around a new backbone (``vision.init`` / ``text.init`` loaded when set)."""
    model = create_model(config, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    return PretrainTask(model, config, tokenizer.mask_token_id, len(tokenizer))


def refuse_legacy_checkpoint(run_dir: Path, checkpoint: Path) -> None:
    """A 0.1.0 checkpoint (weights only, ``model.``-prefixed) cannot be resumed until it is upgraded."""
    if not is_model_folder(checkpoint):
        raise ValueError(f"{checkpoint} was written by mpma 0.1.0 (not a model folder): run "
                         f"`mpma convert --upgrade {run_dir}` once, then --resume")


def summarize_losses(log_path: Path, total_steps: int, terms: list[str]) -> dict[str, dict[str, float]]:
    """Mean of each term over the logged steps in the first 5% and in the last 5% of the run."""
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    window = max(1, int(round(0.05 * total_steps)))
    summary = {}
    for term in terms:
        values = [(r["step"], r[term]) for r in rows if term in r]
        if not values:
            continue
        first = [v for s, v in values if s <= window] or [values[0][1]]
        last = [v for s, v in values if s > total_steps - window] or [values[-1][1]]
        summary[term] = {"first": sum(first) / len(first), "last": sum(last) / len(last)}
    return summary


def load_run_config(run_dir: Path) -> Config:
    path = run_dir / "config.json"
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    return config_from_dict(values)


def run_pretraining(config: Config | None, out_dir: str | Path, resume: bool = False, progress: bool = True,
                    overwrite: bool = False, resume_overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Pre-train (or resume) into ``out_dir``; returns the summary written to ``summary.json``.

    Args:
        config: the run's configuration; ignored with ``resume`` (the run's ``config.json`` decides).
        resume: continue the run in ``out_dir`` from its newest checkpoint that can be read (broken
            ones are moved aside as ``step_<N>.broken``).
        overwrite: start the run even when ``out_dir`` holds another run or other files: the run
            files in it (:data:`mpma.engine.run_folder.RUN_FILES`) are removed first; other files are kept.
        resume_overrides: ``key=value`` changes of ``optim.*`` / ``run.*`` for the resumed run (e.g.
            a lower ``optim.lr`` after a divergence, a larger ``optim.steps``; see
            :mod:`mpma.pipelines.resuming`); written to its ``config.json`` and recorded in ``log.jsonl``
            as ``{"step", "config_change"}``.

    Raises:
        RunFolderError: ``out_dir`` holds another run or other files (see ``prepare_run_folder``), or
            another process uses it (RunFolderLockedError).
        DivergenceError: a non-finite loss or non-finite weights; names the step and the last good checkpoint.
    """
    run_dir = Path(out_dir)
    changes: dict[str, tuple] = {}
    if resume and overwrite:
        raise ValueError(f"--resume continues the run in {run_dir} and --overwrite replaces it: pass one of them")
    if resume:  # the run's own config.json decides (``config`` may be None)
        resumable_run(run_dir, PRETRAIN)
        config, changes = resume_config(load_run_config(run_dir), resume_overrides)
    elif resume_overrides:
        raise ValueError("resume_overrides apply to a resumed run only (resume=True)")
    configure_threads(config.run.threads)  # 0 = auto: the cores other processes leave free
    env = distributed.setup(config.run.device)
    try:
        with RunLock(run_dir) if env.is_main else nullcontext():  # under torchrun rank 0 holds the lock
            if env.is_main and not resume:
                prepare_run_folder(run_dir, PRETRAIN, config.to_dict(), overwrite)
            return _pretrain(config, run_dir, env, resume, progress, changes)
    finally:
        distributed.cleanup()


def _pretrain(config: Config, run_dir: Path, env, resume: bool, progress: bool, changes: dict[str, tuple]) -> dict:
    """The body of :func:`run_pretraining`, in a folder it holds (lock taken, guard passed)."""
    torch.manual_seed(config.run.seed)
    data = build_pretrain_data(config)
    run_tokenizer = run_dir / "tokenizer"
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (resume and run_tokenizer.is_dir()):  # a resumed run keeps the vocabulary it started with
            build_tokenizer(config, data).save_pretrained(str(run_tokenizer))
        if not resume:  # a resumed run's config.json is rewritten once its checkpoint is loaded
            write_json(run_dir / "config.json", config.to_dict())
    distributed.barrier()
    tokenizer = load_tokenizer(run_tokenizer)
    task = build_task(config, tokenizer).to(env.device)
    if config.run.activation_checkpointing:
        task.model.set_grad_checkpointing(True)
    grounding = None
    # FSDP: no rank holds the whole model while training, so the grounding is measured at the end only
    sharded = env.distributed and config.run.parallel == "fsdp"
    measure_grounding = config.run.grounding_every > 0 and hasattr(data.held_out, "cases")  # synthrad truth
    if env.is_main and measure_grounding and not sharded:
        grounding = GroundingDiagnostics(task.model, tokenizer, config, run_dir)
        warn_sparse_grounding(config)
    trainer = _make_trainer(task, tokenizer, config, run_dir, env, grounding)
    latest = None
    if resume:
        latest = trainer.resume_latest(check=lambda checkpoint: refuse_legacy_checkpoint(run_dir, checkpoint))
    if latest is None and env.is_main:
        (run_dir / "log.jsonl").unlink(missing_ok=True)  # starting at step 0: drop a killed run's log
    if resume and env.is_main:
        write_json(run_dir / "config.json", config.to_dict())  # with the changes, if any
        if changes:
            record_config_change(run_dir, trainer.step, changes)
    collate = PairCollator(tokenizer, config.text.max_length)  # held-out evaluation: no masking
    train_collate = PairCollator(tokenizer, config.text.max_length, masker=_text_masker(task, config, env, data, tokenizer))
    bad = BadRecords.for_training(data, config.data.max_bad_fraction, run_dir, env, fresh=latest is None)
    started = time.perf_counter()
    try:
        trainer.fit(lambda start: bad.filter(_batches(data.train, train_collate, config, env, start)), progress)
    except DivergenceError as error:
        raise DivergenceError(f"{error}. To go on from there (from step 0 without a checkpoint) with a lower "
                              f"learning rate: mpma pretrain --out {run_dir} --resume optim.lr=<lower>") from None
    train_seconds = time.perf_counter() - started
    if not env.is_main:
        return {}
    if sharded:  # FSDP: the summary's evaluation runs on rank 0 alone, on the whole last checkpoint
        task = _unsharded_task(config, tokenizer, run_dir, env)
        grounding = GroundingDiagnostics(task.model, tokenizer, config, run_dir) if measure_grounding else None
    return _write_summary(task, data, collate, config, run_dir, env, train_seconds, grounding)


def _unsharded_task(config: Config, tokenizer, run_dir: Path, env) -> PretrainTask:
    """A new task on this rank's device holding the weights of the run's newest checkpoint (the
    trained task of a ``run.parallel=fsdp`` run holds only this rank's shard)."""
    task = build_task(config, tokenizer).to(env.device)
    weights, _ = ckpt.read_checkpoint(ckpt.latest_checkpoint(run_dir))
    ckpt.load_state_strict(task.model, weights, run_dir)
    return task


def pretrain_parameter_groups(task: PretrainTask, config: Config) -> list[dict]:
    """The AdamW groups of a pre-training run: fusion/heads at ``optim.lr * optim.head_lr_mult``, the text
    encoder at ``optim.lr * optim.text_lr_mult``, no
    weight decay on biases, norms and the model's ``no_weight_decay`` names (also used by
    benchmarks/pretrain_step.py, so that it times the optimizer a run uses)."""
    model = task.model
    return parameter_groups(task, config.optim, {f"model.{n}" for n in model.head_parameter_names()},
                            {f"model.{n}" for n in model.no_weight_decay()},
                            {f"model.{n}" for n in model.text_parameter_names()})


def warn_sparse_grounding(config: Config) -> None:
    """Warn when ``run.grounding_every`` is not a multiple of ``run.checkpoint_every``: the diagnostics
    run at checkpoints, so they would be taken less often than asked (only at the common multiples)."""
    every, checkpoint_every = config.run.grounding_every, config.run.checkpoint_every
    if every % checkpoint_every == 0:
        return
    actual = math.lcm(every, checkpoint_every)
    warnings.warn(f"run.grounding_every={every} is measured at checkpoints, and run.checkpoint_every={checkpoint_every}: "
                  f"the grounding diagnostics will be taken every {actual} steps (and at the end), not every {every}. "
                  f"Set run.checkpoint_every to a divisor of {every}, or run.grounding_every to a multiple of "
                  f"{checkpoint_every}.", stacklevel=2)


def _make_trainer(task: PretrainTask, tokenizer, config: Config, run_dir: Path, env,
                  grounding: GroundingDiagnostics | None = None) -> Trainer:
    """The Trainer of ``task``: parameter groups (head learning rate, no weight decay), checkpoints as
    model folders with pre-training provenance, curves.png redrawn and the grounding diagnostics taken
    (when asked) at each checkpoint."""
    model = task.model
    groups = pretrain_parameter_groups(task, config)
    # Without ITM nothing reads the fusion's pooled output, so its poolers get no gradient.
    # curves.png is redrawn at each checkpoint (the last one follows the last log line); never raises.
    provenance = {"pretrain": pretrain_provenance(config, None)}
    tracker = open_tracker(config.run.report_to, run_dir, config.to_dict(), env.is_main)  # run.report_to

    def on_checkpoint(step: int) -> None:
        if grounding is not None and step % config.run.grounding_every == 0:
            grounding.measure(step)
        write_run_curves(run_dir)
        track_pretrain_checkpoint(tracker, run_dir, step, config.optim.steps)

    return Trainer(task, task.loss_weights, groups, config.optim, config.run, run_dir, env,
                   on_checkpoint=on_checkpoint, on_log=tracker.log_record,
                   find_unused_parameters=model.itm_head is None, weights_module=model,
                   end_loss_weights=config.objectives.end_weights,
                   write_model=lambda folder: save_pretrained(model, folder, tokenizer, provenance=provenance,
                                                              config=config))


def _write_summary(task: PretrainTask, data: PretrainData, collate, config: Config, run_dir: Path, env,
                   train_seconds: float, grounding: GroundingDiagnostics | None = None) -> dict:
    """The run's summary (steps, time, parameters, loss first/last means, zero-shot retrieval and,
    when measured, the grounding diagnostics at the last step), written atomically to ``summary.json``."""
    model = task.model
    summary = {
        "steps": config.optim.steps,
        "train_seconds": round(train_seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "losses": summarize_losses(run_dir / "log.jsonl", config.optim.steps, ["loss", *task.loss_weights]),
        "retrieval": evaluate_zero_shot_retrieval(model, data, collate, config, env.device),
        "bad_records": count_bad_records(run_dir),  # every rank's, listed in rejects.jsonl
    }
    if grounding is not None:
        last = grounding.last
        report = last[1] if last is not None and last[0] == config.optim.steps else grounding.measure(config.optim.steps)
        summary["grounding"] = {"step": config.optim.steps, **report}
        write_run_curves(run_dir)  # the last step's grounding line is drawn too
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(run_dir / "summary.json")
    return summary


def _batches(dataset, collate, config: Config, env, start: int):
    """Endless batches from global micro-batch ``start``: exact replay for map-style data; a packed
    (iterable) stream restarts its shuffled shard stream and skips ``start`` batches. On a GPU the
    batches come in pinned memory; ``data.num_workers`` processes each keep 4 batches ready."""
    from torch.utils.data import DataLoader, IterableDataset

    workers, pin = config.data.num_workers, env.device.type == "cuda"
    if isinstance(dataset, IterableDataset):
        loader = DataLoader(dataset, batch_size=config.data.batch_size,
                            collate_fn=CountingCollate(collate) if getattr(collate, "numbered", False) else collate,
                            num_workers=workers, pin_memory=pin, prefetch_factor=4 if workers else None,
                            persistent_workers=workers > 0)
        stream = iter(loader)
        for _ in range(start):
            next(stream)
        return stream
    sampler = EpochBatches(len(dataset), config.data.batch_size, config.data.seed, env.rank, env.world_size)
    return iterate_batches(dataset, collate, sampler, start, workers, pin_memory=pin)


def _text_masker(task: PretrainTask, config: Config, env, data: PretrainData, tokenizer) -> TextMasker | None:
    """The MLM masking of the training batches, drawn on the loader workers (None without MLM).

    With ``text.mask_weighting`` idf or surprisal the draw weights (:func:`mpma.data.text.mask_weights`)
    are estimated from the first RUN_TOKENIZER_TEXTS training texts under the run's tokenizer: the same
    on every rank and on resume, as they depend on the data and the saved tokenizer only.
    """
    if "mlm" not in task.loss_weights:
        return None
    weights = None
    if config.text.mask_weighting != "uniform":
        weights = mask_weights(tokenizer, data.train.texts()[:RUN_TOKENIZER_TEXTS], config.text.max_length,
                               config.text.mask_weighting)
        task.token_mask_weights = weights
    return TextMasker(task.mask_token_id, task.vocab_size, config.text.mask_ratio, config.text.whole_word,
                      seed=config.run.seed * 1_000_003 + env.rank, token_weights=weights)


def evaluate_zero_shot_retrieval(model, data: PretrainData, collate, config: Config, device) -> dict:
    """Zero-shot retrieval on held-out pairs; a hit is an item with the same grouping key."""
    if not model.has_global_alignment:
        return {"skipped": "no GLA alignment head in this configuration (objectives.global_align=0)"}
    if data.held_out is None:
        return {"skipped": "the manifest has no 'val' split"}
    image_embed, text_embed = embed_dataset(model, data.held_out, collate, 256, device)
    if hasattr(data.held_out, "cases"):
        keys = [data.held_out.cases[i].finding_key for i in range(len(data.held_out))]
    else:
        keys = [r.text for r in data.held_out.records]
    report = retrieval_report(image_embed, text_embed, keys)
    report["n_pairs"] = len(keys)
    report["n_distinct_keys"] = len(set(keys))
    return report

