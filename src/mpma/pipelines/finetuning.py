"""``mpma finetune`` and ``mpma evaluate``: downstream runs from scratch or from a pre-trained run.

Run folder::

    config.json     the resolved FinetuneConfig (with the computed number of steps)
    backbone.json   the backbone Config;  tokenizer/  the tokenizer used
    task.json       task name, answer vocabulary / label names, vocabulary convention, data notes
    log.jsonl       training steps and one line per epoch with the validation metrics
    curves.png      the log drawn after each epoch (``mpma visualize curves``)
    best/           a model folder (mpma.hub) of the kept epoch: the best validation metric
                    (``keep=best_val``, the default) or the final epoch (``keep=last``)
    checkpoints/    step_<N>/: a model folder + the trainer's state.pt, once per epoch
    metrics.json, metrics.md  test metrics of the kept epoch (evaluated once, at the end); bad_records
    rejects.jsonl   one line per image that cannot be read (its examples are left out of every split)
    .lock           while a process writes into the folder (mpma.engine.run_folder.RunLock)

``--out`` is guarded (:func:`mpma.engine.run_folder.prepare_run_folder`): a folder holding another
run, this run finished, or other files is refused unless ``--overwrite``; an unfinished run of the
same configuration is started again (fine-tuning has no --resume).
"""

from __future__ import annotations

import json
import math
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

from mpma.config import Config, ConfigError, FinetuneConfig, config_from_dict, load_config
from mpma.config.finetune import KEEP_EPOCHS
from mpma.data.bad_records import REJECTS, check_fraction, left_out, write_rejects
from mpma.data.collate import ExampleList, ImageStore, TaskCollator
from mpma.data.sampling import EpochBatches, iterate_batches
from mpma.data.sources.identity import describe_identity, test_set_identity
from mpma.data.text import TokenizerCoverageWarning, cached_tokenizer, coverage_warning, load_tokenizer, unknown_token_rate
from mpma.engine import checkpoint as ckpt
from mpma.engine import distributed
from mpma.engine.run_folder import FINETUNE, RunLock, prepare_run_folder
from mpma.engine.threads import configure_threads
from mpma.engine.trainer import Trainer, parameter_groups
from mpma.eval.metrics import scalar_items
from mpma.hub import load_model, save_pretrained
from mpma.hub.folder import write_json
from mpma.models.factory import create_model
from mpma.models.mpma import heads_for_objectives
from mpma.pipelines.pretraining import build_pretrain_data, build_tokenizer
from mpma.pipelines.tracking import log_validation, open_tracker
from mpma.tasks.base import get_task
from mpma.tasks.data import build_task_data
from mpma.viz.curves import write_run_curves

# pre-training heads no downstream task reads: never built for fine-tuning
FINETUNE_DROPPED_HEADS = {"mlm_head", "mim_decoder"}
# config.json keys fix_schedule computes from the epochs: not compared when telling whether a folder holds this run
SCHEDULE_KEYS = {"optim.steps", "optim.warmup_steps", "run.checkpoint_every"}


def scratch_tokenizer(config: FinetuneConfig, backbone_config: Config, task_texts):
    """The tokenizer of a model fine-tuned from scratch: the preset's, synthrad's, or one trained on the task's text."""
    if backbone_config.text.tokenizer or backbone_config.text.init:
        return load_tokenizer(backbone_config.text.tokenizer or backbone_config.text.init)
    if config.data.dataset == "synthrad":
        return build_tokenizer(backbone_config, build_pretrain_data(backbone_config))
    name = "task-" + "".join(c if c.isalnum() else "_" for c in config.data.dataset)[-40:]
    return cached_tokenizer(name, task_texts, backbone_config.text.vocab_size)


def load_init(init: str):
    """The pre-trained backbone of ``--init`` (a run folder, a checkpoint or a model folder), without the
    heads fine-tuning never reads."""
    try:
        return load_model(init, drop_heads=FINETUNE_DROPPED_HEADS)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"--init {init}: expected 'scratch', a pre-training run folder (with checkpoints/), "
                                f"one of its checkpoints/step_N folders or a model folder ({error})") from None


class FinetuneRun:
    """Everything a fine-tuning or evaluation run needs, built from a FinetuneConfig.

    The task (``mpma.tasks``) decides the data, the module, the collation and the metrics.
    """

    def __init__(self, config: FinetuneConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.task = get_task(config.task)
        if config.data.blank_text and not self.task.text_fields:
            raise ConfigError(f"data.blank_text=true: task {self.task.name!r} reads no text to blank; drop the override")
        if config.data.blank_images and not self.task.reads_image:
            raise ConfigError(f"data.blank_images=true: task {self.task.name!r} reads no image to blank; drop the override")
        pretrained = None
        if config.init == "scratch":
            self.backbone_config = load_config(config.preset)
        else:  # a pre-training run, one of its checkpoints, or a model folder
            pretrained = load_init(config.init)
            self.backbone_config = pretrained.config
        image_size = self.backbone_config.vision.image_size
        self.data = build_task_data(self.task, config.data, image_size)
        images = ImageStore(image_size)  # every image read once up front; examples whose image fails are left out
        self.bad_images, self.image_files = images.drop_unreadable(self.data.splits) if self.task.reads_image else ([], 0)
        self.multi_label = self.data.multi_label
        self.max_length = self.backbone_config.text.max_length
        if pretrained is None:
            self.tokenizer = scratch_tokenizer(config, self.backbone_config, self._example_texts)
            heads = heads_for_objectives(self.backbone_config) - FINETUNE_DROPPED_HEADS
            self.backbone = create_model(self.backbone_config, len(self.tokenizer), self.tokenizer.pad_token_id, heads=heads)
        else:
            self.tokenizer, self.backbone = pretrained.tokenizer, pretrained.backbone.train()
        if config.run.activation_checkpointing:
            self.backbone.set_grad_checkpointing(True)
        self.fresh_alignment = self.task.prepare_backbone(config, self.backbone)
        self.classes = self.task.classes(config, self.data)
        self.collate = TaskCollator(self.tokenizer, self.max_length, images, reads_image=self.task.reads_image,
                                    text_fields=self.task.text_fields, target=self.task.target, classes=self.classes,
                                    multi_label=self.multi_label, soft_targets=self.task.soft_targets(config),
                                    blank_images=config.data.blank_images, blank_text=config.data.blank_text,
                                    answer_slot=config.head.pool == "slot" and self.task.reads_pair)
        if config.head.label_smoothing and (not self.task.smooths_labels or self.task.soft_targets(config)):
            raise ConfigError(f"head.label_smoothing={config.head.label_smoothing}: task {self.task.name!r} has no "
                              "single-label cross-entropy loss to smooth (vqa with head.vqa_loss=ce, or mm_cls); "
                              "drop the override")
        self.module = self.task.build_module(config, self.backbone, self.classes, self.multi_label)
        (self.module or self.backbone).to(device)

    def _example_texts(self) -> list[str]:
        return [e[k] for e in self.data.splits["train"] for k in self.task.text_fields if isinstance(e.get(k), str)]

    def evaluate(self, split: str, shuffle_images: bool = False) -> dict:
        """The task's metrics on one split; with ``shuffle_images`` each example gets the image of
        another example of the split (a seeded permutation): the drop from the plain score shows how
        much the model uses the image."""
        examples = self.data.splits[split]
        if shuffle_images:
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(self.config.data.seed + 1))
            examples = [{**example, "image": examples[j]["image"]} for example, j in zip(examples, order.tolist())]
        return self.task.evaluate(self, examples)

    def selection_value(self, metrics: dict) -> float:
        return float(metrics[self.task.selection_metric])

    def training_texts(self) -> list[str]:
        """The text the model reads in training: the task's text fields of the training examples and
        any texts the task adds (zero-shot: the label prompts); none for image-only tasks."""
        return self._example_texts() + self.task.extra_texts(self.config, self.classes)

    def tokenizer_coverage(self) -> dict:
        """:func:`mpma.data.text.unknown_token_rate` of :meth:`training_texts` under the run's tokenizer;
        warns (TokenizerCoverageWarning) when more than 1% of the tokens are [UNK]."""
        report = unknown_token_rate(self.tokenizer, self.training_texts())
        message = coverage_warning(report, f"the {self.config.task} training text ({self.config.data.dataset})")
        if message:
            warnings.warn(message, TokenizerCoverageWarning, stacklevel=2)
        return report

    def task_metadata(self) -> dict:
        return {"task": self.config.task, "classes": self.classes, "multi_label": self.multi_label,
                **self.task.metadata(self.config), "init": self.config.init, "data": self.data.notes,
                "fresh_alignment_head": self.fresh_alignment, "split_sizes": {k: len(v) for k, v in self.data.splits.items()}}

    def model_task(self) -> dict:
        """The ``task.json`` of this run's model folders (best/, checkpoints)."""
        keys = ("task", "classes", "multi_label", *self.task.metadata(self.config))
        return {k: v for k, v in self.task_metadata().items() if k in keys}

    def provenance(self, epochs: int) -> dict:
        config = self.config
        return {"finetune": {"task": config.task, "init": config.init, "data": self.data.notes, "epochs": epochs,
                             "split_sizes": self.task_metadata()["split_sizes"], "lr": config.optim.lr,
                             "batch_size": config.data.batch_size}}

    def save_model(self, folder: Path, epochs: int, metrics: dict | None = None) -> Path:
        """This run's current model as a model folder (mpma.hub)."""
        return save_pretrained(self.module or self.backbone, folder, self.tokenizer, task=self.model_task(),
                               metrics=metrics, provenance=self.provenance(epochs), config=self.backbone_config)


def fix_schedule(config: FinetuneConfig, epochs: int, steps_per_epoch: int) -> None:
    """Set the step schedule from the epochs: fine-tuning counts epochs, so a user-set ``optim.steps`` or
    ``run.checkpoint_every`` is an error rather than silently replaced; ``optim.warmup_steps`` > 0 is kept
    (else ``warmup_fraction`` of the steps)."""
    defaults = FinetuneConfig()
    for name, value, default in (("optim.steps", config.optim.steps, defaults.optim.steps),
                                 ("run.checkpoint_every", config.run.checkpoint_every, defaults.run.checkpoint_every)):
        if value != default:
            raise ConfigError(f"{name}={value}: fine-tuning counts epochs and checkpoints once per epoch; "
                              f"set epochs=N instead and leave {name} unset")
    config.optim.steps = epochs * steps_per_epoch
    if config.optim.warmup_steps <= 0:
        config.optim.warmup_steps = int(math.ceil(config.warmup_fraction * config.optim.steps))
    config.run.checkpoint_every = max(1, steps_per_epoch)


def _train(run: FinetuneRun, run_dir: Path, env, sampler, progress: bool) -> dict:
    """Train ``config.epochs`` epochs, keeping one epoch's weights in ``best/`` (``config.keep``: the best
    validation epoch or the last); returns {value, epoch} of the kept epoch (value: its validation metric)."""
    config, module, epochs = run.config, run.module, run.config.epochs
    steps_per_epoch = sampler.batches_per_epoch
    best = {"value": -math.inf, "epoch": 0}
    tracker = open_tracker(config.run.report_to, run_dir, config.to_dict(), env.is_main)  # run.report_to

    def end_of_epoch(step: int) -> None:
        epoch = step // steps_per_epoch
        value = None  # no validation split (data.val_fraction=0, keep=last): nothing to score or log
        if run.data.splits["val"]:
            metrics = run.evaluate("val")
            value = run.selection_value(metrics)
            with (run_dir / "log.jsonl").open("a") as handle:
                handle.write(json.dumps({"step": step, "epoch": epoch, "val": metrics}, default=float) + "\n")
            log_validation(tracker, step, epoch, metrics, config.optim.steps)
        kept = value > best["value"] if config.keep == "best_val" else epoch == epochs
        if kept:
            best.update(value=value, epoch=epoch)
            run.save_model(run_dir / "best", epoch)
        if (run_dir / "log.jsonl").exists():  # none yet: no validation line and no logged step
            write_run_curves(run_dir)  # curves.png after each epoch; never raises

    if run.task.starts_from_pretrained_model(config, run.backbone):
        if env.is_main:
            end_of_epoch(0)
        distributed.barrier()
    groups = parameter_groups(module, config.optim, module.head_parameter_names(),
                              {n for n, _ in module.named_parameters() if n.startswith("backbone.")
                               and n.removeprefix("backbone.") in run.backbone.no_weight_decay()},
                              {f"backbone.{n}" for n in run.backbone.text_parameter_names()})
    trainer = Trainer(module, {k: 1.0 for k in run.task.loss_names(config)}, groups, config.optim, config.run, run_dir, env,
                      on_checkpoint=end_of_epoch, write_model=lambda folder: run.save_model(folder, epochs),
                      on_log=tracker.log_record)
    dataset = ExampleList(run.data.splits["train"], augment_seed=config.data.seed if config.data.augment else None)
    trainer.fit(lambda start: iterate_batches(dataset, run.collate, sampler, start, config.data.num_workers), progress)
    if env.is_main:
        ckpt.load_weights(module, run_dir / "best" / ckpt.WEIGHTS)
    return best


def _test(run: FinetuneRun, best: dict, coverage: dict | None) -> dict:
    """Test metrics of the best epoch, plus the train fit and the shuffled-image score when asked."""
    config = run.config
    epochs = config.epochs if run.module is not None else 0
    metadata = run.task_metadata()
    result = {"task": config.task, "init": config.init, "best_epoch": best["epoch"], "epochs": epochs, "keep": config.keep,
              "val_selection": None if epochs == 0 else best["value"], "test": run.evaluate("test"),
              "answer_vocab": metadata.get("answer_vocab"), "split_sizes": metadata["split_sizes"]}
    if config.head.train_fit and run.module is not None:  # how well the best epoch fits what it trained on
        result["train_fit"] = run.evaluate("train")
    if config.head.shuffled_eval and run.task.reads_pair and not config.data.blank_images:
        result["test_shuffled_images"] = run.evaluate("test", shuffle_images=True)
    result["tokenizer_coverage"] = coverage
    result["test_set"] = test_set_identity(config.data.dataset, result["split_sizes"])
    return result


def run_finetune(config: FinetuneConfig, out_dir: str | Path, progress: bool = True, overwrite: bool = False) -> dict:
    """Fine-tune (``epochs`` > 0) with best-epoch selection on val, then test once; returns test metrics.

    ``best/`` is a model folder (mpma.hub) of the best epoch (of the untrained model for zero-shot tasks).

    Args:
        overwrite: run even when ``out_dir`` holds another run, this run finished, or other files:
            the run files in it (:data:`mpma.engine.run_folder.RUN_FILES`) are removed first; other
            files are kept.

    Raises:
        RunFolderError: ``out_dir`` cannot take this run (see ``prepare_run_folder``), or another
            process uses it (RunFolderLockedError).
    """
    run_dir = Path(out_dir)
    configure_threads(config.run.threads)  # 0 = auto: the cores other processes leave free
    env = distributed.setup(config.run.device)
    try:
        with RunLock(run_dir) if env.is_main else nullcontext():  # under torchrun rank 0 holds the lock
            if env.is_main:
                prepare_run_folder(run_dir, FINETUNE, config.to_dict(), overwrite, ignore=SCHEDULE_KEYS)
            return _finetune(config, run_dir, env, progress)
    finally:
        distributed.cleanup()


def _finetune(config: FinetuneConfig, run_dir: Path, env, progress: bool) -> dict:
    """The body of :func:`run_finetune`, in a folder it holds (lock taken, guard passed)."""
    torch.manual_seed(config.run.seed)
    run = FinetuneRun(config, env.device)
    train = run.data.splits["train"]
    epochs = config.epochs if run.module is not None else 0  # zero-shot tasks never train
    if epochs and config.keep == "best_val" and not run.data.splits["val"]:
        raise ConfigError(f"{config.data.dataset} has no validation split here (data.val_fraction=0): keep=best_val "
                          "has nothing to choose by; set keep=last, or data.val_fraction above 0")
    sampler = EpochBatches(len(train), min(config.data.batch_size, len(train)), config.data.seed, env.rank, env.world_size)
    fix_schedule(config, epochs, sampler.batches_per_epoch)
    coverage = run.tokenizer_coverage() if env.is_main else None  # [UNK] share of the training text
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", config.to_dict())
        write_json(run_dir / "backbone.json", run.backbone_config.to_dict())
        write_json(run_dir / "task.json", {**run.task_metadata(), "tokenizer_coverage": coverage})
        run.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
        write_rejects(run_dir / REJECTS, run.bad_images)
    check_fraction(run.bad_images, run.image_files, config.data.max_bad_fraction, "images", "image", run_dir / REJECTS)
    best = _train(run, run_dir, env, sampler, progress) if epochs > 0 else {"value": -math.inf, "epoch": 0}
    result = {}
    if env.is_main:
        result = {**_test(run, best, coverage), "bad_records": left_out(run.bad_images)}  # listed in rejects.jsonl
        write_json(run_dir / "metrics.json", result)
        (run_dir / "metrics.md").write_text(metrics_markdown(result))
        if epochs == 0:
            run.save_model(run_dir / "best", 0, result)
        else:
            write_json(run_dir / "best" / "metrics.json", result)
    return result


def metrics_markdown(result: dict) -> str:
    """A markdown table of the scalar test metrics."""
    rows = scalar_items(result["test"])
    rule = KEEP_EPOCHS[result.get("keep", "best_val")]  # runs from before keep= kept the best validation epoch
    lines = [f"# {result['task']} (init: {result['init']}, epoch {result['best_epoch']} of {result['epochs']} kept: {rule})", "",
             f"Test set: {describe_identity(result.get('test_set'))}", "", "| metric | test |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n"


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict:
    """Re-evaluate a fine-tuning run's best weights on a split (``mpma evaluate``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} has no config.json (pass a folder written by `mpma finetune`)")
    config = config_from_dict(json.loads((run_dir / "config.json").read_text()), FinetuneConfig)
    config.optim.steps, config.run.checkpoint_every = 0, FinetuneConfig().run.checkpoint_every
    device = distributed.pick_device(config.run.device)
    run = FinetuneRun(config, device)
    if run.module is not None and (run_dir / "best" / ckpt.WEIGHTS).exists():
        ckpt.load_weights(run.module, run_dir / "best" / ckpt.WEIGHTS)
    if not run.data.splits.get(split):
        raise ValueError(f"split '{split}' has no examples in this run (splits with examples: "
                         f"{sorted(name for name, examples in run.data.splits.items() if examples)})")
    metrics = run.evaluate(split)
    if left_out(run.bad_images, split):  # as in the run: examples whose image cannot be read are not scored
        warnings.warn(f"{left_out(run.bad_images, split)} {split} examples left out: their image cannot be read "
                      f"(listed in {run_dir / REJECTS})", stacklevel=2)
    metrics["test_set"] = test_set_identity(config.data.dataset, {k: len(v) for k, v in run.data.splits.items()},
                                            split=split)
    return metrics


def finetune_config(task: str, init: str, data: str | None, source: str | None, overrides: list[str]) -> FinetuneConfig:
    """Build a FinetuneConfig from the CLI's pieces (``source`` is an optional YAML file): the task's
    recipe (:attr:`mpma.tasks.base.Task.recipe`) beneath ``source`` beneath ``overrides``."""
    config = load_config(source, list(overrides), cls=FinetuneConfig, defaults=get_task(task).recipe)
    config.task, config.init = task, init
    if data:
        config.data.dataset = data
    return config


__all__ = ["Config", "FinetuneConfig", "run_finetune", "evaluate_run", "finetune_config"]
