"""Where VQA fine-tuning loses its fit: the same questions through more and more of the model.

    python benchmarks/vqa_fit.py --data vqa-rad:../shared/data/vqa_rad [--steps 500] [--lr 1e-3]

Trains a fresh answer classifier on the mean of the question's token states after, in turn: the
word embeddings, the text encoder, the fusion's projection and final norm (fusion depth 0), and the
full co-attention fusion (whose text stream also attends to the image). Each variant is a fresh ``tiny`` model with the
same seed, batches and optimiser (AdamW, one learning rate). It prints the running training accuracy
of the last 30 steps: a path that fits much worse than the one before it is where the optimisation
slows. This is how docs/RESULTS.md section 3 found the fusion learning-rate problem.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from mpma.config import load_config
from mpma.data.sampling import EpochBatches, iterate_batches
from mpma.data.collate import ExampleList
from mpma.config import FinetuneConfig
from mpma.models.heads import ClassifierHead
from mpma.pipelines.finetuning import FinetuneRun

PATHS = ("embeddings", "text_encoder", "fusion_depth0", "fusion")


def features(path: str, backbone, batch: dict) -> torch.Tensor:
    """(B, D) mean over the question's tokens after ``path``; the images reach only the fusion."""
    mask = batch["attention_mask"]
    weights = mask.float().unsqueeze(-1)  # (B, T, 1)
    if path == "embeddings":
        tokens = backbone.text.word_embeddings()(batch["input_ids"])
    else:
        tokens = backbone.encode_text(batch["input_ids"], mask)
    if path.startswith("fusion"):
        tokens = backbone.fuse(tokens, mask, backbone.encode_image(batch["images"]).tokens).text
    return (tokens * weights).sum(1) / weights.sum(1)


def fit(path: str, data: str, steps: int, lr: float, preset: str, batch_size: int, overrides: list[str],
        data_overrides: tuple[str, ...] = ()) -> dict:
    """Train ``path`` for ``steps``; ``overrides`` change the backbone, ``data_overrides`` the task data."""
    fusion = ["fusion.depth=0"] if path == "fusion_depth0" else []
    config = load_config(None, [f"data.dataset={data}", f"preset={preset}", "head.vqa_loss=ce", *data_overrides],
                         cls=FinetuneConfig)
    if fusion or overrides:  # a backbone variant: a preset file extended by the overrides
        import tempfile

        import yaml

        from mpma.config import overrides_to_dict

        spec = {"base": preset, **overrides_to_dict([*fusion, *overrides])}
        handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        yaml.safe_dump(spec, handle)
        handle.close()
        config.preset = handle.name
    torch.manual_seed(0)
    run = FinetuneRun(config, torch.device("cpu"))
    backbone = run.module.backbone
    width = backbone.fusion.config.width if path.startswith("fusion") else backbone.text.width
    head = ClassifierHead(width, len(run.classes), 2 * width)
    optimizer = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=lr, betas=(0.9, 0.999),
                                  weight_decay=0.01)
    train = run.data.splits["train"]
    batches = iterate_batches(ExampleList(train), run.collate, EpochBatches(len(train), batch_size), 0, 0)
    accuracy, started = [], time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        logits = head(features(path, backbone, batch))
        loss = F.cross_entropy(logits, batch["targets"], ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracy.append((logits.argmax(1) == batch["targets"]).float().mean().item())
    window = accuracy[-30:]
    return {"path": path, "steps": steps, "lr": lr, "train_accuracy_last_30_steps": round(sum(window) / len(window), 3),
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="vqa-rad:PATH or a VQA manifest")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, action="append", help="learning rate(s) (default 1e-3)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--paths", default=",".join(PATHS), help=f"subset of {','.join(PATHS)}")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="backbone override, e.g. fusion.memory_slots=0")
    args = parser.parse_args()
    for lr in args.lr or [1e-3]:
        for path in args.paths.split(","):
            print(json.dumps(fit(path, args.data, args.steps, lr, args.preset, args.batch_size, args.override)), flush=True)


if __name__ == "__main__":
    main()
