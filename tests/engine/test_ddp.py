"""DDP on CPU: ``torchrun --nproc_per_node 2`` of ``mpma pretrain`` completes with identical weights on
both ranks, and the global InfoNCE sees the negatives of every rank.

The ranks run ``mpma.cli.main`` unchanged; a small driver script only spies on the library (it wraps
``Trainer.fit`` to dump each rank's weights and ``info_nce`` to record logit shapes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

DRIVER = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import torch
    import torch.distributed as dist

    from mpma.engine.trainer import Trainer
    from mpma.objectives import alignment

    out = Path(sys.argv[1])
    shapes = []
    original_info_nce = alignment.info_nce

    def spy_info_nce(logits, offset=0):
        shapes.append([list(logits.shape), offset])
        return original_info_nce(logits, offset)

    alignment.info_nce = spy_info_nce
    original_fit = Trainer.fit

    def gather_gradient_check(rank, world):
        """Gradient of the gathered InfoNCE on this rank's rows == world x that of the full batch."""
        torch.manual_seed(123)  # the same full batch on every rank
        full_image = torch.nn.functional.normalize(torch.randn(world * 3, 8), dim=-1)
        full_text = torch.nn.functional.normalize(torch.randn(world * 3, 8), dim=-1)
        rows = slice(rank * 3, rank * 3 + 3)
        image = full_image[rows].clone().requires_grad_(True)
        text = full_text[rows].clone().requires_grad_(True)
        loss, _ = alignment.global_alignment_loss(image, text, torch.tensor(5.0))
        loss.backward()
        reference_image = full_image.clone().requires_grad_(True)
        reference_text = full_text.clone().requires_grad_(True)
        logits = 5.0 * reference_image @ reference_text.t()
        target = torch.arange(world * 3)
        reference = 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                           + torch.nn.functional.cross_entropy(logits.t(), target))
        reference.backward()
        losses = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        return {
            "mean_loss_error": abs(float(sum(losses) / world) - float(reference)),
            "image_grad_error": float((image.grad - world * reference_image.grad[rows]).abs().max()),
            "text_grad_error": float((text.grad - world * reference_text.grad[rows]).abs().max()),
        }

    def fit(self, batches, progress=True):
        first = {}

        def recorded(start):
            for batch in batches(start):
                first.setdefault("ids", batch["input_ids"].tolist())
                yield batch

        initial = {k: v.detach().clone() for k, v in self.task.state_dict().items()}
        original_fit(self, recorded, progress)
        rank, world = self.env.rank, self.env.world_size
        final = {k: v.detach().cpu().clone() for k, v in self.task.state_dict().items()}
        torch.save(final, out / f"rank{rank}.pt")
        info = {
            "rank": rank, "world": world, "step": self.step, "wrapper": type(self.wrapped).__name__,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "shapes": shapes, "first_ids": first["ids"],
            "changed": sum(not torch.equal(initial[k], final[k]) for k in final),
            "gather": gather_gradient_check(rank, world),
        }
        (out / f"rank{rank}.json").write_text(json.dumps(info))

    Trainer.fit = fit
    from mpma.cli import main

    sys.exit(main(sys.argv[2:]))
''')


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_ddp_pretrain_on_cpu(micro_overrides, mpma_env, tmp_path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    dumps, run = tmp_path / "dumps", tmp_path / "run"
    dumps.mkdir()
    steps, batch = 3, 8
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(driver), str(dumps),
        "pretrain", "--out", str(run), "--no-progress", *micro_overrides,
        f"optim.steps={steps}", "run.log_every=1", "run.device=cpu", f"data.batch_size={batch}",
    ]
    env = {**mpma_env, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])

    infos = [json.loads((dumps / f"rank{r}.json").read_text()) for r in range(2)]
    for rank, info in enumerate(infos):
        assert info["rank"] == rank and info["world"] == 2 and info["step"] == steps
        assert info["wrapper"] == "DistributedDataParallel" and info["backend"] == "gloo"
        assert info["changed"] > 0  # the weights were trained
        # global InfoNCE: B local rows against 2B gathered columns, positives offset by rank * B
        global_calls = [offset for shape, offset in info["shapes"] if shape == [batch, 2 * batch]]
        assert len(global_calls) == 2 * steps and set(global_calls) == {rank * batch}
        # the all-gather passes gradients back to the rank that owns the rows (large-batch equivalence)
        gather = info["gather"]
        assert gather["mean_loss_error"] < 1e-5
        assert gather["image_grad_error"] < 1e-5 and gather["text_grad_error"] < 1e-5, gather
    assert infos[0]["first_ids"] != infos[1]["first_ids"], "the ranks must see different data"

    # both ranks hold identical weights, equal to what rank 0 checkpointed
    import torch
    from safetensors.torch import load_file

    weights = [torch.load(dumps / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert weights[0].keys() == weights[1].keys()
    different = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert different == []
    saved = load_file(str(run / "checkpoints" / f"step_{steps:08d}" / "model.safetensors"))
    assert all(torch.equal(saved[k], weights[0]["model." + k]) for k in saved)  # the checkpoint holds the backbone

    # rank 0 alone wrote the run folder; the log averages both ranks; the summary is complete
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "grounding" not in r]  # the grounding diagnostics' own lines (tests/eval)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    summary = json.loads((run / "summary.json").read_text())
    assert {"mlm", "mim", "global_align", "local_align", "itm"} <= set(summary["losses"])
    assert "i2t" in summary["retrieval"]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("ablation", [["objectives.itm=0"], ["objectives.global_align=0"]], ids=["no-itm", "no-global"])
def test_ddp_ablations_with_a_loss_switched_off(micro_overrides, mpma_env, tmp_path, ablation) -> None:
    """Switching a loss off must not leave DDP waiting for gradients of parameters nothing used."""
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mpma.cli",
        "pretrain", "--out", str(run), "--no-progress", *micro_overrides, *ablation,
        "optim.steps=2", "run.log_every=1", "run.device=cpu", "data.batch_size=8",
    ]
    proc = subprocess.run(command, env={**mpma_env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (run / "summary.json").exists()
