"""Frozen CLIP loading: the committed toy CLIP, open_clip checkpoints, embeddings and logits."""

from __future__ import annotations

import pytest
import torch

from promptlab.models import ClipLoadError, load_clip
from promptlab.models.loading import BUILTIN_WEIGHTS


@pytest.fixture(scope="module")
def toyclip():
    return load_clip(weights_file="builtin:toyclip")


def test_toyclip_is_frozen_and_stays_in_eval_mode(toyclip):
    assert all(not p.requires_grad for p in toyclip.parameters())
    toyclip.train()
    assert not toyclip.training and not toyclip.model.training
    assert toyclip.image_size == 32 and toyclip.ctx_dim == 64 and toyclip.embed_dim == 64
    assert toyclip.weights_id.startswith("sha256:")


def test_embeddings_are_unit_norm_and_logits_are_scaled_cosines(toyclip):
    torch.manual_seed(0)
    images = torch.randn(5, 3, 32, 32)
    image_emb = toyclip.encode_image(images)
    text_emb = toyclip.encode_text(["a photo of a red circle.", "a photo of a blue star.", "x"])
    torch.testing.assert_close(image_emb.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(text_emb.norm(dim=-1), torch.ones(3))
    # Against open_clip's own encoders: projection then L2 normalisation.
    raw_image = toyclip.model.encode_image(images, normalize=True)
    raw_text = toyclip.model.encode_text(toyclip.tokenize(["a photo of a red circle.", "a photo of a blue star.", "x"]),
                                         normalize=True)
    torch.testing.assert_close(image_emb, raw_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text_emb, raw_text, atol=1e-5, rtol=1e-5)
    from promptlab.methods import logits_from_features

    logits = logits_from_features(image_emb, text_emb, toyclip.logit_scale())
    torch.testing.assert_close(logits, toyclip.model.logit_scale.exp() * image_emb @ text_emb.t())


def test_open_clip_training_checkpoint_format_loads_the_same_model(toyclip, tmp_path):
    """A checkpoint as open_clip's trainer writes it ({"state_dict": {"module.<key>": ...}})."""
    state = torch.load(BUILTIN_WEIGHTS["toyclip"], weights_only=True)
    path = tmp_path / "epoch_32.pt"
    torch.save({"epoch": 32, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    other = load_clip(weights_file=str(path))
    text = ["a photo of a green ring."]
    torch.testing.assert_close(other.encode_text(text), toyclip.encode_text(text))


def test_missing_files_and_unknown_tags_say_what_to_pass(tmp_path):
    with pytest.raises(ClipLoadError, match="model.weights_file=/abs/path"):
        load_clip(weights_file=str(tmp_path / "nope.pt"))
    with pytest.raises(ClipLoadError, match="neither a file nor a known tag.*openai"):
        load_clip(name="ViT-B-32", pretrained="not-a-tag")
    with pytest.raises(ClipLoadError, match="Unknown builtin weights"):
        load_clip(weights_file="builtin:bigclip")
