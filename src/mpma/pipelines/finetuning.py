"""``mpma finetune`` and ``mpma evaluate``: downstream runs from scratch or from a pre-trained run.

Run folder::

    config.json     the resolved FinetuneConfig (with the computed number of steps)
    backbone.json   the backbone Config;  tokenizer/  the tokenizer used
    task.json       task name, answer vocabulary / label names, vocabulary convention, data notes
    log.jsonl       training steps and one line per epoch with the validation metrics
    curves.png      the log drawn after each epoch (``mpma visualize curves``)
    best/model.safetensors   weights of the epoch with the best validation metric
    metrics.json, metrics.md  test metrics of the best epoch (evaluated once, at the end)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from mpma.config import Config, config_from_dict, load_config
from mpma.data.published import describe_identity, test_set_identity
from mpma.data.records import normalize_answer
from mpma.engine import checkpoint as ckpt
from mpma.engine import distributed
from mpma.finetune_config import TASKS, FinetuneConfig


# tasks whose prediction reads an image and a text together: their test score is also taken with shuffled images
SHUFFLABLE_TASKS = ("vqa", "mm_cls")


def resolve_init(init: str) -> tuple[Path, Path]:
    """A pre-training run folder or checkpoint folder -> (run folder, weights file)."""
    path = Path(init)
    if (path / ckpt.WEIGHTS).exists() and (path.parent.parent / "config.json").exists():
        return path.parent.parent, path / ckpt.WEIGHTS
    if (path / "config.json").exists():
        latest = ckpt.latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"--init {path}: the run folder has no complete checkpoint under checkpoints/")
        return path, latest / ckpt.WEIGHTS
    raise FileNotFoundError(f"--init {init}: expected 'scratch', a pre-training run folder (with config.json and "
                            "checkpoints/) or one of its checkpoints/step_N folders")


def load_backbone(config: FinetuneConfig, task_texts):
    """(backbone Config, tokenizer, MPMAModel) for ``config.init``; pre-training heads are dropped."""
    from safetensors.torch import load_file

    from mpma.data.text import cached_tokenizer, load_tokenizer
    from mpma.models.mpma import MPMAModel

    if config.init == "scratch":
        backbone_config = load_config(config.preset)
        if backbone_config.text.tokenizer or backbone_config.text.init:
            tokenizer = load_tokenizer(backbone_config.text.tokenizer or backbone_config.text.init)
        elif config.data.dataset == "synthrad":
            from mpma.pipelines.pretraining import build_pretrain_data, build_tokenizer

            tokenizer = build_tokenizer(backbone_config, build_pretrain_data(backbone_config))
        else:
            name = "task-" + "".join(c if c.isalnum() else "_" for c in config.data.dataset)[-40:]
            tokenizer = cached_tokenizer(name, task_texts, backbone_config.text.vocab_size)
        model = MPMAModel(backbone_config, len(tokenizer), tokenizer.pad_token_id)
    else:
        run_dir, weights = resolve_init(config.init)
        backbone_config = config_from_dict(json.loads((run_dir / "config.json").read_text()))
        tokenizer = load_tokenizer(run_dir / "tokenizer")
        model = MPMAModel(backbone_config, len(tokenizer), tokenizer.pad_token_id)
        state = {k.removeprefix("model."): v for k, v in load_file(str(weights)).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"{weights} does not match its config: missing {missing[:10]}, unexpected {unexpected[:10]}")
    model.mlm_head = None
    model.mim_decoder = None
    return backbone_config, tokenizer, model


def answer_vocabulary(data, convention: str) -> list[str]:
    """Answers of train+val ("train") or of every split ("all_splits", M3AE's convention), normalised."""
    if convention not in ("train", "all_splits"):
        raise ValueError(f"head.answer_vocab must be 'train' or 'all_splits', got {convention!r}")
    splits = ("train", "val", "test") if convention == "all_splits" else ("train", "val")
    return sorted({normalize_answer(e["answer"]) for s in splits for e in data.splits[s]})


def build_module(config: FinetuneConfig, backbone, classes: list[str], multi_label: bool):
    from mpma.tasks.downstream import FusedClassifier, RetrievalTrainer, UnimodalClassifier

    task, head = config.task, config.head
    if task == "vqa":
        return FusedClassifier(backbone, len(classes), head.vqa_loss, head.hidden_mult, head.pool)
    if task == "mm_cls":
        return FusedClassifier(backbone, len(classes), "ce", head.hidden_mult, head.pool)
    if task == "img_cls":
        if head.image_mode not in ("finetune", "linear_probe"):
            raise ValueError(f"head.image_mode must be 'finetune' or 'linear_probe', got {head.image_mode!r}")
        return UnimodalClassifier(backbone, "image", len(classes), multi_label, head.image_mode == "linear_probe")
    if task == "txt_cls":
        return UnimodalClassifier(backbone, "text", len(classes), multi_label)
    if task == "retrieval":
        return RetrievalTrainer(backbone, head.retrieval_itm)
    return None  # zero_shot_cls: no trainable module


class FinetuneRun:
    """Everything a fine-tuning or evaluation run needs, built from a FinetuneConfig."""

    def __init__(self, config: FinetuneConfig, device: torch.device) -> None:
        from mpma.data.task_batches import TaskCollator
        from mpma.data.tasks import ImageStore, build_task_data

        if config.task not in TASKS:
            raise ValueError(f"unknown task '{config.task}' (tasks: {', '.join(TASKS)})")
        self.config = config
        self.device = device
        preset_config = load_config(config.preset) if config.init == "scratch" else None
        image_size = (preset_config.vision.image_size if preset_config else
                      config_from_dict(json.loads((resolve_init(config.init)[0] / "config.json").read_text())).vision.image_size)
        self.data = build_task_data(config.task, config.data, image_size)
        def train_texts() -> list[str]:  # for a tokenizer trained on the task's own text (scratch, non-synthrad)
            return [e.get("question") or e.get("text") or "" for e in self.data.splits["train"]]

        self.backbone_config, self.tokenizer, self.backbone = load_backbone(config, train_texts)
        self.fresh_alignment = False
        if config.task == "retrieval" and not self.backbone.has_global_alignment and config.epochs > 0:
            # e.g. an M3AE-style backbone: retrieval fine-tuning starts a new GLA-global projection.
            from mpma.models.heads import AlignmentHeads

            objectives = self.backbone_config.objectives
            self.backbone.align = AlignmentHeads(self.backbone.vision.width, self.backbone.text.width,
                                                 objectives.align_dim, objectives.temperature, local=False)
            self.fresh_alignment = True
        if config.task == "vqa":
            self.classes = answer_vocabulary(self.data, config.head.answer_vocab)
        else:
            self.classes = self.data.label_names
        soft = config.task == "vqa" and config.head.vqa_loss == "bce"
        self.collate = TaskCollator(config.task, self.tokenizer, self.backbone_config.text.max_length,
                                    ImageStore(image_size), self.classes, self.data.multi_label, soft,
                                    blank_images=config.data.blank_images)
        self.module = build_module(config, self.backbone, self.classes, self.data.multi_label)
        (self.module or self.backbone).to(device)

    def evaluate(self, split: str, shuffle_images: bool = False) -> dict:
        """The task's metrics on one split; with ``shuffle_images`` each example gets the image of
        another example of the split (a seeded permutation): the drop from the plain score shows how
        much the model uses the image."""
        from mpma.eval import downstream as D

        examples, batch = self.data.splits[split], self.config.data.eval_batch_size
        if shuffle_images:
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(self.config.data.seed + 1))
            examples = [{**example, "image": examples[j]["image"]} for example, j in zip(examples, order.tolist())]
        task = self.config.task
        if task == "retrieval":
            return D.evaluate_retrieval(self.backbone, examples, self.collate, batch, self.device, self.config.head.rerank_k)
        if task == "zero_shot_cls":
            return D.evaluate_zero_shot(self.backbone, examples, self.collate, self.tokenizer, self.classes,
                                        self.config.head.prompt, self.backbone_config.text.max_length, batch, self.device)
        scores = D.predict_scores(self.module, examples, self.collate, batch, self.device)
        if task == "vqa":
            return D.evaluate_vqa(scores, examples, self.classes)
        return D.evaluate_classification(scores, examples, self.classes, self.data.multi_label)

    def selection_value(self, metrics: dict) -> float:
        from mpma.eval.downstream import SELECTION_METRIC

        return float(metrics[SELECTION_METRIC[self.config.task]])

    def training_texts(self) -> list[str]:
        """The text the model reads in training: questions (vqa), ``text`` and ``text_pair``
        (classification, retrieval) and, for zero_shot_cls, the label prompts; none for img_cls."""
        texts = [e[k] for e in self.data.splits["train"] for k in ("question", "text", "text_pair")
                 if isinstance(e.get(k), str)]
        if self.config.task == "zero_shot_cls":
            texts += [self.config.head.prompt.format(label=label) for label in self.classes]
        return texts

    def tokenizer_coverage(self) -> dict:
        """:func:`mpma.data.text.unknown_token_rate` of :meth:`training_texts` under the run's tokenizer;
        warns (TokenizerCoverageWarning) when more than 1% of the tokens are [UNK]."""
        import warnings

        from mpma.data.text import TokenizerCoverageWarning, coverage_warning, unknown_token_rate

        report = unknown_token_rate(self.tokenizer, self.training_texts())
        message = coverage_warning(report, f"the {self.config.task} training text ({self.config.data.dataset})")
        if message:
            warnings.warn(message, TokenizerCoverageWarning, stacklevel=2)
        return report

    def task_metadata(self) -> dict:
        return {"task": self.config.task, "classes": self.classes, "multi_label": self.data.multi_label,
                "answer_vocab": self.config.head.answer_vocab if self.config.task == "vqa" else None,
                "init": self.config.init, "data": self.data.notes, "fresh_alignment_head": self.fresh_alignment,
                "split_sizes": {k: len(v) for k, v in self.data.splits.items()}}


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=float) + "\n")
    tmp.replace(path)


def run_finetune(config: FinetuneConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Fine-tune (``epochs`` > 0) with best-epoch selection on val, then test once; returns test metrics."""
    from mpma.data.sampling import EpochBatches, iterate_batches
    from mpma.data.task_batches import ExampleList
    from mpma.engine.trainer import Trainer, parameter_groups
    from mpma.viz.curves import write_run_curves

    run_dir = Path(out_dir)
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    env = distributed.setup(config.run.device)
    try:
        torch.manual_seed(config.run.seed)
        run = FinetuneRun(config, env.device)
        train = run.data.splits["train"]
        epochs = config.epochs if run.module is not None else 0  # zero-shot tasks never train
        sampler = EpochBatches(len(train), min(config.data.batch_size, len(train)), config.data.seed, env.rank, env.world_size)
        steps_per_epoch = sampler.batches_per_epoch
        config.optim.steps = epochs * steps_per_epoch
        config.optim.warmup_steps = int(math.ceil(config.warmup_fraction * config.optim.steps))
        config.run.checkpoint_every = max(1, steps_per_epoch)
        coverage = run.tokenizer_coverage() if env.is_main else None  # [UNK] share of the training text
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_json(run_dir / "config.json", config.to_dict())
            _write_json(run_dir / "backbone.json", run.backbone_config.to_dict())
            _write_json(run_dir / "task.json", {**run.task_metadata(), "tokenizer_coverage": coverage})
            run.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
        best = {"value": -math.inf, "epoch": 0}

        def end_of_epoch(step: int) -> None:
            epoch = step // steps_per_epoch
            metrics = run.evaluate("val")
            value = run.selection_value(metrics)
            with (run_dir / "log.jsonl").open("a") as handle:
                handle.write(json.dumps({"step": step, "epoch": epoch, "val": metrics}, default=float) + "\n")
            if value > best["value"]:
                best.update(value=value, epoch=epoch)
                (run_dir / "best").mkdir(exist_ok=True)
                ckpt.save_weights(run.module, run_dir / "best" / ckpt.WEIGHTS)
            write_run_curves(run_dir)  # curves.png after each epoch's validation line; never raises

        if epochs > 0 and config.task == "retrieval" and config.init != "scratch" and run.backbone.has_global_alignment:
            # a pre-trained GLA head is already a retrieval model: score it as "epoch 0", so a fine-tune
            # that does not beat zero-shot on val keeps the zero-shot weights (best_epoch 0)
            if env.is_main:
                end_of_epoch(0)
            distributed.barrier()
        if epochs > 0:
            module = run.module
            groups = parameter_groups(module, config.optim, module.head_parameter_names(),
                                      {n for n, _ in module.named_parameters() if n.startswith("backbone.")
                                       and n.removeprefix("backbone.") in run.backbone.no_weight_decay()})
            trainer = Trainer(module, {k: 1.0 for k in _loss_names(config)}, groups, config.optim, config.run,
                              run_dir, env, on_checkpoint=end_of_epoch)
            dataset = ExampleList(train, augment_seed=config.data.seed if config.data.augment else None)
            trainer.fit(lambda start: iterate_batches(dataset, run.collate, sampler, start, config.data.num_workers), progress)
            if env.is_main:
                ckpt.load_weights(module, run_dir / "best" / ckpt.WEIGHTS)
        result = {}
        if env.is_main:
            test = run.evaluate("test")
            result = {"task": config.task, "init": config.init, "best_epoch": best["epoch"], "epochs": epochs,
                      "val_selection": None if epochs == 0 else best["value"], "test": test,
                      "answer_vocab": run.task_metadata()["answer_vocab"], "split_sizes": run.task_metadata()["split_sizes"]}
            if config.head.train_fit and run.module is not None:  # how well the best epoch fits what it trained on
                result["train_fit"] = run.evaluate("train")
            if config.head.shuffled_eval and config.task in SHUFFLABLE_TASKS and not config.data.blank_images:
                result["test_shuffled_images"] = run.evaluate("test", shuffle_images=True)
            result["tokenizer_coverage"] = coverage
            result["test_set"] = test_set_identity(config.data.dataset, result["split_sizes"])
            _write_json(run_dir / "metrics.json", result)
            (run_dir / "metrics.md").write_text(metrics_markdown(result))
        return result
    finally:
        distributed.cleanup()


def _loss_names(config: FinetuneConfig) -> list[str]:
    if config.task == "retrieval":
        return ["global_align", "itm"] if config.head.retrieval_itm else ["global_align"]
    return ["task"]


def metrics_markdown(result: dict) -> str:
    """A markdown table of the scalar test metrics."""
    from mpma.eval.metrics import scalar_items

    rows = scalar_items(result["test"])
    lines = [f"# {result['task']} (init: {result['init']}, best epoch {result['best_epoch']} of {result['epochs']})", "",
             f"Test set: {describe_identity(result.get('test_set'))}", "", "| metric | test |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n"


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict:
    """Re-evaluate a fine-tuning run's best weights on a split (``mpma evaluate``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} has no config.json (pass a folder written by `mpma finetune`)")
    config = config_from_dict(json.loads((run_dir / "config.json").read_text()), FinetuneConfig)
    device = distributed.pick_device(config.run.device)
    run = FinetuneRun(config, device)
    if run.module is not None and (run_dir / "best" / ckpt.WEIGHTS).exists():
        ckpt.load_weights(run.module, run_dir / "best" / ckpt.WEIGHTS)
    if split not in run.data.splits:
        raise ValueError(f"split '{split}' not in {sorted(run.data.splits)}")
    metrics = run.evaluate(split)
    metrics["test_set"] = test_set_identity(config.data.dataset, {k: len(v) for k, v in run.data.splits.items()},
                                            split=split)
    return metrics


def finetune_config(task: str, init: str, data: str | None, source: str | None, overrides: list[str]) -> FinetuneConfig:
    """Build a FinetuneConfig from the CLI's pieces (``source`` is an optional YAML file)."""
    config = load_config(source, list(overrides), cls=FinetuneConfig)
    config.task, config.init = task, init
    if data:
        config.data.dataset = data
    return config


__all__ = ["Config", "FinetuneConfig", "run_finetune", "evaluate_run", "finetune_config"]
