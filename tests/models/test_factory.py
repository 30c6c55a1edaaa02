"""create_model is the one place weights are loaded: constructors never read a file."""

from __future__ import annotations

import pytest
import torch

from mpma.models.factory import WeightsMismatchError, create_model, load_state_strict
from mpma.models.mpma import PRETRAIN_HEADS, MPMAModel, heads_for_objectives


def test_the_constructor_reads_no_init_path(micro_config):
    """MPMAModel builds random weights even when *.init names a file that does not exist."""
    config = micro_config("vision.init=/nonexistent/clip.safetensors", "text.init=/nonexistent/bert")
    model = MPMAModel(config, vocab_size=50, pad_token_id=0)
    assert model.vision.width == 32
    with pytest.raises((FileNotFoundError, OSError)):
        create_model(config, vocab_size=50, pad_token_id=0)


def test_a_state_is_loaded_strictly_and_init_paths_are_not_read(micro_config):
    source = create_model(micro_config(), vocab_size=50, pad_token_id=0)
    state = source.state_dict()
    config = micro_config("vision.init=/nonexistent/clip.safetensors")  # ignored: the weights come from ``state``
    copy = create_model(config, vocab_size=50, pad_token_id=0, state=state)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), copy.state_dict().values()))
    del state["fusion.text_proj.bias"]
    with pytest.raises(WeightsMismatchError, match="1 missing keys: fusion.text_proj.bias"):
        create_model(micro_config(), vocab_size=50, pad_token_id=0, state=state)


def test_heads_are_chosen_at_construction(micro_config):
    config = micro_config()
    assert heads_for_objectives(config) == set(PRETRAIN_HEADS)
    model = create_model(config, vocab_size=50, pad_token_id=0, heads={"align", "itm_head"}, align_parts=(True, False))
    assert model.heads == {"align", "itm_head"} and model.align_parts == (True, False)
    assert model.mlm_head is None and model.mim_decoder is None
    with pytest.raises(ValueError, match="unknown heads"):
        MPMAModel(config, 50, 0, heads={"decoder"})
    m3ae_style = micro_config("objectives.global_align=0", "objectives.local_align=0")
    assert "align" not in create_model(m3ae_style, vocab_size=50, pad_token_id=0).heads


def test_strict_loading_names_unexpected_and_reshaped_keys(micro_config):
    model = create_model(micro_config(), vocab_size=50, pad_token_id=0)
    state = dict(model.state_dict())
    state["extra.weight"] = torch.zeros(1)
    state["fusion.text_proj.bias"] = torch.zeros(3)
    with pytest.raises(WeightsMismatchError, match="1 unexpected keys: extra.weight.*fusion.text_proj.bias \\[3\\]"):
        load_state_strict(model, state, "test")
