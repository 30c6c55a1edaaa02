"""Objectives: finite losses, overfitting a fixed batch, gradients, switch-offs, hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from mpma.objectives.alignment import (
    global_alignment_loss,
    info_nce,
    late_interaction_scores,
    local_alignment_loss,
)
from mpma.objectives.matching import itm_loss, sample_hard_negatives
from mpma.objectives.reconstruction import mim_loss, mim_target, mlm_loss
from mpma.models.vision import patchify

ALL_TERMS = {"mlm", "mim", "global_align", "local_align", "itm"}


@pytest.fixture(scope="module")
def batch(make_batch):
    return make_batch(n=8)


def _losses(task, batch, seed: int = 0):
    """One pass with the masks, negatives and (text-encoder) dropout fixed by ``seed``, as the trainer does."""
    torch.manual_seed(seed)
    return task(batch, torch.Generator().manual_seed(seed))


def test_every_loss_is_finite_and_present(micro_config, build_task, batch) -> None:
    task = build_task(micro_config())
    result = _losses(task, batch)
    assert set(result.losses) == ALL_TERMS == set(task.loss_weights)
    for name, value in result.losses.items():
        assert value.ndim == 0 and torch.isfinite(value), name
        assert value.requires_grad, name
    # sensible starting values for an untrained model on a batch of 8
    assert result.losses["itm"].item() == pytest.approx(math.log(2), abs=0.1)
    assert result.losses["global_align"].item() == pytest.approx(math.log(8), abs=1.5)
    assert result.losses["mlm"].item() == pytest.approx(math.log(task.vocab_size), abs=1.0)
    assert result.losses["mim"].item() == pytest.approx(1.0, abs=0.2)  # normalised pixels vs ~0 predictions
    for name in ("mlm_acc", "i2t_acc", "itm_acc", "temperature"):
        assert torch.isfinite(result.metrics[name])


def test_losses_are_finite_under_bf16_autocast(micro_config, build_task, batch) -> None:
    task = build_task(micro_config())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = _losses(task, batch)
    total = sum(result.losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_one_pass_is_reproducible_with_a_generator(micro_config, build_task, batch) -> None:
    task = build_task(micro_config())
    a, b = _losses(task, batch, seed=3), _losses(task, batch, seed=3)
    c = _losses(task, batch, seed=4)
    for name in ALL_TERMS:
        assert a.losses[name].item() == b.losses[name].item(), name
    assert any(a.losses[name].item() != c.losses[name].item() for name in ("mlm", "mim"))


def _overfit(task, batch, steps: int, lr: float) -> list[dict[str, float]]:
    """Train on one batch with the same masks and negatives every step, clipping like the trainer."""
    optimizer = torch.optim.AdamW(task.parameters(), lr=lr, weight_decay=0.0)
    history = []
    for _ in range(steps):
        result = _losses(task, batch, seed=0)
        total = sum(task.loss_weights[k] * v for k, v in result.losses.items())
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(task.parameters(), 1.0)
        optimizer.step()
        history.append({k: v.item() for k, v in result.losses.items()})
    return history


def _mean(history: list[dict[str, float]], name: str) -> float:
    return sum(h[name] for h in history) / len(history)


def test_overfitting_one_batch_drives_every_loss_down(micro_config, build_task, batch) -> None:
    task = build_task(micro_config("objectives.local_align=1.0"))
    history = _overfit(task, batch, steps=60, lr=3e-3)
    first = history[0]
    assert set(first) == ALL_TERMS
    for name in sorted(ALL_TERMS - {"itm"}):
        assert _mean(history[-5:], name) < 0.5 * first[name], (name, first[name], history[-5:])
    # ITM's hard negatives follow the (fast-changing) global similarities, so on one batch its target
    # moves every step: here it only has to stay finite and not diverge; the next test shows it learns.
    assert all(math.isfinite(h["itm"]) for h in history) and _mean(history[-5:], "itm") < 1.5 * first["itm"]


def test_overfitting_drives_itm_down_with_fixed_negatives(micro_config, build_task, batch) -> None:
    # M3AE-style: without GLA the negatives are drawn uniformly, so only the ITM head and fusion learn
    task = build_task(micro_config(
        "objectives.mlm=0", "objectives.mim=0", "objectives.global_align=0", "objectives.local_align=0"))
    assert set(task.loss_weights) == {"itm"}
    history = _overfit(task, batch, steps=60, lr=1e-3)
    assert history[0]["itm"] == pytest.approx(math.log(2), abs=0.05)
    assert _mean(history[-5:], "itm") < 0.4


def _params_without_gradient(task) -> list[str]:
    return [name for name, p in task.named_parameters()
            if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))]


@pytest.mark.parametrize("overrides", [
    (),
    ("fusion.memory_slots=0",),
    ("fusion.depth=2", "fusion.memory_layers=[1]"),
    ("objectives.mlm=0",),
    ("objectives.mim=0",),
    ("objectives.local_align=0",),
    ("objectives.global_align=0", "objectives.local_align=0"),
    ("objectives.global_align=0",),
], ids=lambda o: "+".join(o) or "full")
def test_every_trainable_parameter_gets_a_gradient(micro_config, build_task, batch, overrides) -> None:
    task = build_task(micro_config(*overrides))
    result = _losses(task, batch)
    assert set(result.losses) == set(task.loss_weights)
    sum(task.loss_weights[k] * v for k, v in result.losses.items()).backward()
    assert _params_without_gradient(task) == []


def test_m3ae_preset_trains_every_parameter(micro_overrides, tokenizer, make_batch) -> None:
    from mpma.config import load_config
    from mpma.pipelines.pretraining import build_task

    # the micro shapes, but the preset's own memory/alignment switches
    task = build_task(load_config("tiny_m3ae", [o for o in micro_overrides if "memory" not in o]), tokenizer)
    assert task.model.align is None and all(layer.memory is None for layer in task.model.fusion.layers)
    result = _losses(task, make_batch(n=4, seed=2))
    assert set(result.losses) == {"mlm", "mim", "itm"}
    sum(result.losses.values()).backward()
    assert _params_without_gradient(task) == []


@pytest.mark.parametrize("term, head", [
    ("mlm", "mlm_head"), ("mim", "mim_decoder"), ("itm", "itm_head"), ("local_align", "align.local_image"),
    ("global_align", None),
])
def test_a_zero_weight_removes_its_loss_and_head(micro_config, build_task, batch, term: str, head: str | None) -> None:
    task = build_task(micro_config(f"objectives.{term}=0"))
    assert term not in task.loss_weights
    result = _losses(task, batch)
    assert term not in result.losses
    assert set(result.losses) == ALL_TERMS - {term}
    if head is not None:
        owner, _, attr = ("model." + head).rpartition(".")
        module = task
        for part in owner.split("."):
            module = getattr(module, part)
        assert getattr(module, attr) is None
        assert not [n for n, _ in task.named_parameters() if n.startswith(f"model.{head}.")]


def test_no_alignment_at_all_removes_the_alignment_heads(micro_config, build_task, batch) -> None:
    task = build_task(micro_config("objectives.global_align=0", "objectives.local_align=0"))
    assert task.model.align is None
    assert set(_losses(task, batch).losses) == {"mlm", "mim", "itm"}


# ------------------------------------------------------------------ hand-computed values


def test_global_infonce_matches_a_hand_computed_2x2_case() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = torch.tensor(10.0)
    loss, metrics = global_alignment_loss(image, text, scale)
    # image->text logits [[10, 6], [0, 8]]; text->image logits [[10, 0], [6, 8]]
    i2t = 0.5 * (math.log(1 + math.exp(-4)) + math.log(1 + math.exp(-8)))
    t2i = 0.5 * (math.log(1 + math.exp(-10)) + math.log(1 + math.exp(-2)))
    assert loss.item() == pytest.approx(0.5 * (i2t + t2i), rel=1e-6)
    assert metrics["i2t_acc"].item() == 1.0
    assert metrics["temperature"].item() == pytest.approx(0.1)


def test_global_infonce_is_symmetric_and_rewards_alignment() -> None:
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    scale = torch.tensor(1 / 0.07)
    assert global_alignment_loss(x, y, scale)[0].item() == pytest.approx(global_alignment_loss(y, x, scale)[0].item())
    assert global_alignment_loss(x, x, scale)[0] < global_alignment_loss(x, y, scale)[0]


def test_info_nce_uses_the_rank_offset() -> None:
    logits = torch.tensor([[0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 5.0]])  # rank 1 of 2, B = 2
    expected = math.log(1 + 3 * math.exp(-5))
    assert info_nce(logits, offset=2).item() == pytest.approx(expected, rel=1e-6)


def test_late_interaction_on_a_constructed_case() -> None:
    e = torch.eye(4)
    # one text: token 0 == patch 0 of image 0, token 1 matches nothing, token 2 is padding (== patch 1)
    text = torch.stack([e[0], e[1], e[3]])[None]  # (1, 3, 4)
    valid = torch.tensor([[1, 1, 0]])
    image0 = torch.stack([e[0], e[3]])[None]  # (1, 2, 4)
    score = late_interaction_scores(text, image0, valid)
    # token->patch: (1 + 0) / 2 over valid tokens; patch->token: (1 + 0) / 2 (padding never matches)
    assert score.shape == (1, 1)
    assert score.item() == pytest.approx(0.5)
    # counting the padding token would give (1+0+1)/3 and (1+1)/2
    everything = late_interaction_scores(text, image0, torch.ones(1, 3))
    assert everything.item() == pytest.approx(0.5 * (2 / 3 + 1.0))
    # a batch of 2 texts x 3 images: identical token/patch sets score 1, orthogonal ones 0
    texts = torch.stack([torch.stack([e[0], e[1]]), torch.stack([e[2], e[3]])])
    images = torch.stack([torch.stack([e[0], e[1]]), torch.stack([e[2], e[3]]), torch.stack([e[0], e[2]])])
    scores = late_interaction_scores(texts, images, torch.ones(2, 2))
    assert scores.shape == (2, 3)
    torch.testing.assert_close(scores, torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]))


@pytest.mark.parametrize("weight", [0.0, 0.25, 0.5, 1.0])
def test_late_interaction_weighs_its_two_directions(weight: float) -> None:
    """A word matching patch 0 of a 3-patch image whose other patches match no word: token->patch
    scores 1, patch->token (1 + 0 + 0) / 3; the score is their mix, and at 0 the background patches
    do not count at all."""
    e = torch.eye(4)
    text = e[0][None, None]  # (1, 1, 4): one word
    image = torch.stack([e[0], e[1], e[2]])[None]  # (1, 3, 4)
    score = late_interaction_scores(text, image, torch.ones(1, 1), weight)
    assert score.item() == pytest.approx((1 - weight) * 1.0 + weight / 3)
    loss = local_alignment_loss(text.expand(2, 1, 4), torch.cat([image, image.roll(1, dims=-1)]),
                                torch.ones(2, 1), torch.tensor(10.0), weight)
    assert torch.isfinite(loss)


def test_local_patch_to_token_is_a_weight(micro_config) -> None:
    from mpma.config import ConfigError

    from mpma.config.pretrain import ObjectivesConfig

    assert ObjectivesConfig().local_patch_to_token == 0.5  # FILIP's symmetric score by default
    assert micro_config().objectives.local_patch_to_token == 0  # tiny: each word's best patch only
    assert micro_config("objectives.local_patch_to_token=0.5").objectives.local_patch_to_token == 0.5
    assert micro_config("objectives.local_patch_to_token=0").objectives.local_patch_to_token == 0
    with pytest.raises(ConfigError, match="objectives.local_patch_to_token.*\\[0, 1\\]"):
        micro_config("objectives.local_patch_to_token=1.5")


def test_local_alignment_loss_prefers_matching_pairs() -> None:
    e = torch.eye(4)
    texts = torch.stack([torch.stack([e[0], e[1]]), torch.stack([e[2], e[3]])])
    valid = torch.ones(2, 2)
    scale = torch.tensor(10.0)
    matched = local_alignment_loss(texts, texts, valid, scale)
    swapped = local_alignment_loss(texts, texts.flip(0), valid, scale)
    assert matched.item() == pytest.approx(math.log(1 + math.exp(-10)), abs=1e-6)
    assert swapped > matched


def test_mlm_loss_and_its_empty_case() -> None:
    logits = torch.tensor([[0.0, 10.0, 0.0], [10.0, 0.0, 0.0]], requires_grad=True)
    loss, accuracy = mlm_loss(logits, torch.tensor([1, 2]))
    expected = 0.5 * (math.log(1 + 2 * math.exp(-10)) + math.log(2 + math.exp(10)))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert accuracy.item() == 0.5
    empty = torch.zeros(0, 3, requires_grad=True)
    loss, accuracy = mlm_loss(empty, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()  # the graph still exists (DDP needs every rank to run the same backward)


def test_mim_target_is_normalised_per_patch() -> None:
    images = torch.rand(2, 3, 16, 16) * 5 + 2
    target = mim_target(images, 8, normalize=True)
    torch.testing.assert_close(target.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.var(-1), torch.ones(2, 4), atol=1e-3, rtol=0)
    torch.testing.assert_close(mim_target(images, 8, normalize=False), patchify(images, 8))


def test_mim_loss_counts_only_masked_patches() -> None:
    images = torch.randn(2, 3, 16, 16)
    target = mim_target(images, 8, normalize=True)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    pred = torch.where(mask.bool()[..., None], target, torch.full_like(target, 100.0))  # wrong on visible
    assert mim_loss(pred, images, mask, 8).item() == pytest.approx(0.0, abs=1e-10)
    pred = target.clone()
    pred[1, 3] += 2.0  # the only error is on a masked patch: MSE = 4 averaged over 3 masked patches
    assert mim_loss(pred, images, mask, 8).item() == pytest.approx(4.0 / 3, rel=1e-5)


def test_hard_negatives_respect_forbidden_and_follow_similarity() -> None:
    similarity = torch.zeros(4, 4)
    similarity[0, 2] = 20.0  # overwhelmingly the hardest negative for row 0
    forbidden = torch.eye(4, dtype=torch.bool)
    forbidden[1, :] = True  # row 1 has no allowed negative -> fallback (1 + 1) % 4
    forbidden[3, 0] = True
    picks = torch.stack([sample_hard_negatives(similarity, forbidden, torch.Generator().manual_seed(s))
                         for s in range(200)])
    assert torch.all(picks[:, 0] == 2)
    assert torch.all(picks[:, 1] == 2)
    for row in (2, 3):
        assert not torch.any(forbidden[row, picks[:, row]])
    assert set(picks[:, 3].tolist()) == {1, 2}  # uniform over the allowed columns


def test_hard_negatives_survive_non_finite_similarities() -> None:
    # a diverged model must reach the trainer's "non-finite loss" error, not crash in multinomial
    similarity = torch.tensor([[float("nan"), 1.0, 2.0], [float("inf"), 0.0, 0.0], [0.0, 0.0, 0.0]])
    picks = sample_hard_negatives(similarity, torch.eye(3, dtype=torch.bool), torch.Generator().manual_seed(0))
    assert picks.shape == (3,) and torch.all(picks != torch.arange(3))


def test_itm_negatives_never_share_the_match_key(micro_config, build_task, make_batch, monkeypatch) -> None:
    from mpma.tasks import pretrain

    task = build_task(micro_config())
    batch = make_batch(n=8)
    batch["match_key"] = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    seen = []
    original = pretrain.sample_hard_negatives

    def spy(similarity, forbidden, generator=None):
        picks = original(similarity, forbidden, generator)
        seen.append((forbidden.clone(), picks))
        return picks

    monkeypatch.setattr(pretrain, "sample_hard_negatives", spy)
    for seed in range(5):
        _losses(task, batch, seed=seed)
    assert len(seen) == 10  # a wrong text and a wrong image per step
    keys = batch["match_key"]
    for forbidden, picks in seen:
        assert torch.all(forbidden[keys[:, None] == keys[None, :]])
        assert not torch.any(keys[picks] == keys)


def test_itm_loss_and_accuracy() -> None:
    logits = torch.tensor([[0.0, 5.0], [5.0, 0.0], [5.0, 0.0]])
    loss, accuracy = itm_loss(logits, torch.tensor([1, 0, 1]))
    assert accuracy.item() == pytest.approx(2 / 3)
    expected = (2 * math.log(1 + math.exp(-5)) + math.log(1 + math.exp(5))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_temperature_is_learnable_and_clamped(micro_config, build_task) -> None:
    task = build_task(micro_config("objectives.temperature=0.05"))
    align = task.model.align
    assert align.logit_scale().item() == pytest.approx(20.0, rel=1e-5)
    assert align.log_inv_temperature.requires_grad
    with torch.no_grad():
        align.log_inv_temperature.fill_(10.0)
    assert align.logit_scale().item() == pytest.approx(100.0, rel=1e-5)


def test_hard_negatives_follow_the_softmax_of_similarity() -> None:
    similarity = torch.tensor([[0.0, 0.0, math.log(3.0)]]).repeat(4000, 1)
    forbidden = torch.zeros(4000, 3, dtype=torch.bool)
    forbidden[:, 0] = True
    picks = sample_hard_negatives(similarity, forbidden, torch.Generator().manual_seed(0))
    share = float((picks == 2).float().mean())
    assert share == pytest.approx(0.75, abs=0.03)  # 3 : 1 against column 1
