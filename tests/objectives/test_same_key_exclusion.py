"""``objectives.align_exclude_same_key``: pairs that share a match key are not GLA's negatives."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mpma.objectives.alignment import global_alignment_loss, local_alignment_loss, same_key_columns


def test_same_key_columns_leave_out_each_rows_own_pair_and_follow_the_rank_offset() -> None:
    keys = torch.tensor([7, 3])  # rank 1 of 2: this rank's rows are columns 2 and 3
    all_keys = torch.tensor([7, 5, 7, 3])
    expected = torch.tensor([[True, False, False, False],   # row 0 (column 2): column 0 shares key 7
                             [False, False, False, False]])  # row 1 (column 3): its own pair only
    assert torch.equal(same_key_columns(keys, all_keys, offset=2), expected)


def test_global_infonce_without_the_same_key_column_matches_a_hand_computed_case() -> None:
    image = torch.eye(3)
    text = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    scale = torch.tensor(10.0)
    keys = torch.tensor([4, 4, 9])  # pairs 0 and 1 show the same findings
    loss, metrics = global_alignment_loss(image, text, scale, match_key=keys)
    # i2t logits [[10, 8, 0], [0, 6, 0], [0, 0, 10]]; t2i = text @ image.T = [[10, 0, 0], [8, 6, 0], [0, 0, 10]]
    # rows 0 and 1 lose each other's column; row 2 keeps all three
    i2t = (math.log(1 + math.exp(-10))            # row 0: columns 0, 2
           + math.log(1 + math.exp(-6))           # row 1: columns 1, 2
           + math.log(1 + 2 * math.exp(-10))) / 3  # row 2
    t2i = (math.log(1 + math.exp(-10)) + math.log(1 + math.exp(-6)) + math.log(1 + 2 * math.exp(-10))) / 3
    assert loss.item() == pytest.approx(0.5 * (i2t + t2i), rel=1e-4)  # float32 logits
    assert metrics["i2t_acc"].item() == 1.0  # row 0's best column (8 of row 1's) no longer counts as a miss
    plain, plain_metrics = global_alignment_loss(image, text, scale)
    assert plain.item() > loss.item() and plain_metrics["i2t_acc"].item() == 1.0


@pytest.mark.parametrize("loss_of", ["global", "local"])
def test_distinct_keys_change_nothing_and_a_shared_key_removes_the_push_apart(loss_of: str) -> None:
    torch.manual_seed(0)
    image = F.normalize(torch.randn(4, 5, 8), dim=-1)  # (B, K, A) patches
    text = F.normalize(torch.randn(4, 6, 8), dim=-1)  # (B, T, A) tokens
    valid = torch.ones(4, 6)
    scale = torch.tensor(1 / 0.07)

    def loss(keys, text=text):
        if loss_of == "global":
            return global_alignment_loss(F.normalize(image.mean(1), dim=-1), F.normalize(text.mean(1), dim=-1),
                                         scale, keys)[0]
        return local_alignment_loss(text, image, valid, scale, match_key=keys)

    distinct = torch.tensor([1, 2, 3, 4])
    assert loss(distinct).item() == pytest.approx(loss(None).item(), rel=1e-6)
    shared = torch.tensor([1, 1, 3, 4])
    # with pairs 0 and 1 sharing a key, moving text 1 toward image 0 no longer costs anything in row 0
    # of image->text: the loss changes only through text 1's own row and the other rows
    moved = text.clone()
    moved[1] = F.normalize(moved[1] + 3 * image[0, :1], dim=-1)
    assert loss(shared, moved).item() < loss(None, moved).item()


def test_the_pretraining_task_passes_the_keys_only_when_asked(micro_config, build_task, make_batch) -> None:
    batch = make_batch(n=8)
    batch["match_key"] = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])

    def losses(*overrides):
        task = build_task(micro_config(*overrides))
        torch.manual_seed(0)
        return task(batch, torch.Generator().manual_seed(0)).losses

    off, on = losses(), losses("objectives.align_exclude_same_key=true")
    assert on["global_align"].item() != pytest.approx(off["global_align"].item())
    assert on["local_align"].item() != pytest.approx(off["local_align"].item())
    assert on["mlm"].item() == pytest.approx(off["mlm"].item())  # the rest of the pass is unchanged
    batch["match_key"] = torch.arange(8)  # every pair its own key: nothing to leave out
    assert losses("objectives.align_exclude_same_key=true")["global_align"].item() == pytest.approx(
        off["global_align"].item(), rel=1e-6)


def test_the_setting_needs_match_keys(micro_config, build_task, make_batch) -> None:
    batch = make_batch(n=4)
    batch.pop("match_key", None)
    task = build_task(micro_config("objectives.align_exclude_same_key=true"))
    with pytest.raises(ValueError, match="match_key"):
        task(batch, torch.Generator().manual_seed(0))
