"""FSDP2 on CPU (gloo): ``torchrun --nproc_per_node 2`` of ``mpma pretrain run.parallel=fsdp`` trains
like DDP, writes the usual (full) checkpoints, and ``--resume`` from them replays the uninterrupted run.

The ranks run ``mpma.cli.main`` unchanged; a small driver script only spies on the trainer (it
records how the task was wrapped and how much of the weights this rank holds).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

DRIVER = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    from mpma.engine.trainer import Trainer

    out = Path(sys.argv[1])
    original_fit = Trainer.fit

    def fit(self, batches, progress=True):
        original_fit(self, batches, progress)
        params = list(self.task.parameters())
        local = sum(getattr(p, "to_local", lambda: p)().numel() for p in params)
        info = {"task": type(self.task).__name__, "sharded": self.sharded, "step": self.step,
                "dtensors": sum(type(p).__name__ == "DTensor" for p in params), "params": len(params),
                "local_numel": local, "numel": sum(p.numel() for p in params)}
        (out / f"rank{self.env.rank}.json").write_text(json.dumps(info))

    Trainer.fit = fit
    from mpma.cli import main

    sys.exit(main(sys.argv[2:]))
''')
TERMS = ("loss", "mlm", "mim", "global_align", "local_align", "itm")


def _torchrun(tmp_path, mpma_env, micro_overrides, run, *overrides: str, resume: bool = False) -> list[dict]:
    """Run the driver under 2-process torchrun; return each rank's record."""
    driver, dumps = tmp_path / "driver.py", tmp_path / f"dumps-{run.name}"
    driver.write_text(DRIVER)
    shutil.rmtree(dumps, ignore_errors=True)
    dumps.mkdir()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver), str(dumps),
        "pretrain", "--out", str(run), "--no-progress",  # a resumed run takes its model from config.json
        *(["--resume"] if resume else micro_overrides),
        "run.log_every=1", "run.device=cpu", "run.grounding_every=0", *overrides,
    ]
    proc = subprocess.run(command, env={**mpma_env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return [json.loads((dumps / f"rank{r}.json").read_text()) for r in range(2)]


def _log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if "grounding" not in line]


def _weights(run, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_trains_like_ddp(micro_overrides, mpma_env, tmp_path) -> None:
    """Same seeds and data: the FSDP run's losses and weights match the DDP run's after 3 steps."""
    import torch

    steps = ["optim.steps=3", "optim.accumulate=2"]  # accumulation: the reduce-scatter is skipped, then run
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    infos = _torchrun(tmp_path, mpma_env, micro_overrides, fsdp, *steps, "run.parallel=fsdp")
    _torchrun(tmp_path, mpma_env, micro_overrides, ddp, *steps, "run.parallel=ddp")
    for info in infos:
        assert info["sharded"] and info["task"].startswith("FSDP") and info["step"] == 3
        assert info["dtensors"] == info["params"]  # every parameter is sharded
        assert info["local_numel"] < 0.6 * info["numel"]  # each rank holds about half of the weights
    rows_fsdp, rows_ddp = _log(fsdp), _log(ddp)
    assert [r["step"] for r in rows_fsdp] == [1, 2, 3]
    for a, b in zip(rows_fsdp, rows_ddp):
        for term in TERMS:
            assert a[term] == pytest.approx(b[term], rel=1e-4, abs=1e-5), (a["step"], term)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    # the checkpoint is the usual full model folder: same names and shapes (a 0-d temperature) as DDP's
    saved_fsdp, saved_ddp = _weights(fsdp, 3), _weights(ddp, 3)
    assert saved_fsdp.keys() == saved_ddp.keys() and saved_fsdp["align.log_inv_temperature"].shape == ()
    assert max(float((saved_fsdp[k] - saved_ddp[k]).abs().max()) for k in saved_fsdp) < 1e-4
    state = torch.load(fsdp / "checkpoints" / "step_00000003" / "state.pt", weights_only=True)
    assert state["step"] == 3 and len(state["optimizer"]["state"]) == sum(
        len(g["params"]) for g in state["optimizer"]["param_groups"])
    summary = json.loads((fsdp / "summary.json").read_text())  # evaluated on rank 0 from the checkpoint
    assert "i2t" in summary["retrieval"]


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_resume_replays_the_uninterrupted_run(micro_overrides, mpma_env, tmp_path) -> None:
    """Checkpoints at steps 2 and 4; resuming from step 2 (weights and sharded AdamW state restored)
    gives the step-4 weights of the uninterrupted run."""
    run = tmp_path / "run"
    overrides = ["optim.steps=4", "run.checkpoint_every=2", "run.keep_checkpoints=0", "run.parallel=fsdp"]
    _torchrun(tmp_path, mpma_env, micro_overrides, run, *overrides)
    uninterrupted, log = _weights(run, 4), _log(run)
    shutil.rmtree(run / "checkpoints" / "step_00000004")  # as if killed after step 3
    infos = _torchrun(tmp_path, mpma_env, micro_overrides, run, *overrides, resume=True)
    assert all(info["step"] == 4 and info["sharded"] for info in infos)
    resumed = _weights(run, 4)
    assert resumed.keys() == uninterrupted.keys()
    assert max(float((resumed[k] - uninterrupted[k]).abs().max()) for k in resumed) < 1e-5
    replayed = _log(run)
    assert [r["step"] for r in replayed] == [1, 2, 3, 4]
    for a, b in zip(replayed[2:], log[2:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_with_the_itm_loss_switched_off(micro_overrides, mpma_env, tmp_path) -> None:
    """Without ITM the fusion poolers get no gradient; the sharded run must not wait for them."""
    run = tmp_path / "run"
    infos = _torchrun(tmp_path, mpma_env, micro_overrides, run, "objectives.itm=0", "optim.steps=2", "run.parallel=fsdp")
    assert all(info["sharded"] and info["step"] == 2 for info in infos)
    assert (run / "summary.json").exists()
