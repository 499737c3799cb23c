"""Contract between promptlab's adapter and open_clip: one tiny random instance per open_clip family.

Every open_clip config is grouped by what decides the text path (model class, pooling, mask, projection,
norms, tokenizer kind, vision kind); one representative per group is built tiny (models/support.py) and the
adapter's features must equal `encode_text` / `encode_image`, with the exact speed-ups where the adapter
enables them and switched off where they would not be exact. If open_clip's internals change, these fail.
Hugging Face tokenizers cannot be fetched offline: their layouts (start token or not, end token or not) are
emulated on the OpenAI BPE, which is what the adapter's layout logic sees.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

from promptlab.methods.coop import CoOpPrompts
from promptlab.models.adapter import END_POOLS, UnsupportedBackboneError, encode_text_tower, text_tower
from promptlab.models.frozen import FrozenCLIP
from promptlab.models.support import build_tiny, markdown, model_class, tiny_config, vision_kind

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["a photo of a dog.", "x", "a small red bird on a branch", "two cats"]
CLASSNAMES = ["dog", "red bird", "cat"]


class EmulatedTokenizer:
    """The OpenAI BPE with another tokenizer's layout: start token or not, end token id or none."""

    def __init__(self, context_length: int, start: bool, end_id: int | None, pad_id: int = 0) -> None:
        self.bpe = SimpleTokenizer(context_length=context_length)
        self.context_length, self.start, self.end_id, self.pad_id = context_length, start, end_id, pad_id

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = ([self.bpe.sot_token_id] if self.start else []) + self.bpe.encode(text)
            ids = (ids + ([self.end_id] if self.end_id is not None else []))[: self.context_length]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


@dataclass(frozen=True)
class Case:
    name: str  # the open_clip model name this group is represented by
    layout: str  # "openai" or an emulated HF layout

    def build(self) -> tuple[nn.Module, object]:
        model = _tiny(self.name)
        cfg = open_clip.get_model_config(self.name)["text_cfg"]
        length = cfg.get("context_length", 77)
        if self.layout == "openai":
            return model, SimpleTokenizer(context_length=length)
        eos = cfg.get("eos_id", 1)
        start, end = {"no-start+end": (False, eos), "start+end": (True, eos), "start+no-end": (True, None)}[self.layout]
        return model, EmulatedTokenizer(length, start, end)


_TINY: dict[str, nn.Module] = {}


def _tiny(name: str) -> nn.Module:
    if name not in _TINY:
        _TINY[name] = build_tiny(name)
    return _TINY[name]


def _signature(name: str) -> str:
    cfg = tiny_config(name)
    skip = ("context_length", "hf_tokenizer_name", "tokenizer_kwargs")
    text = {k: v for k, v in cfg["text_cfg"].items() if k not in skip}
    vision = cfg["vision_cfg"] if vision_kind(cfg) != "timm" else "timm"
    return json.dumps([model_class(cfg).__name__, text, vision, bool(cfg.get("quick_gelu"))], sort_keys=True)


def _families() -> tuple[list[Case], list[str]]:
    reps: dict[str, str] = {}
    for name in open_clip.list_models():
        reps.setdefault(_signature(name), name)
    cases, refused = [], []
    for name in reps.values():
        cfg = open_clip.get_model_config(name)
        text = cfg["text_cfg"]
        if "hf_model_name" in text or "multimodal_cfg" in cfg:
            refused.append(name)
        elif not text.get("hf_tokenizer_name"):
            cases.append(Case(name, "openai"))
        elif text.get("pool_type") == "eos":
            cases += [Case(name, "no-start+end"), Case(name, "start+end")]
        else:
            cases += [Case(name, "no-start+end"), Case(name, "start+no-end")]
    return cases, refused


CASES, REFUSED = _families()


def _ids(case: Case) -> str:
    return f"{case.name}[{case.layout}]"


def test_every_family_is_covered():
    covered = {c.name for c in CASES} | set(REFUSED)
    signatures = {_signature(n) for n in open_clip.list_models()}
    assert {_signature(n) for n in covered} == signatures
    assert len(CASES) >= 10 and REFUSED


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_text_features_equal_encode_text(case):
    model, tokenizer = case.build()
    clip = FrozenCLIP(model, tokenizer, "random", name=case.name)
    plain = FrozenCLIP(model, tokenizer, "random", truncate_text=False, share_prefix=False, name=case.name)
    with torch.no_grad():
        reference = F.normalize(model.encode_text(tokenizer(TEXTS)), dim=-1)
    torch.testing.assert_close(clip.encode_text(TEXTS), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain.encode_text(TEXTS), reference, atol=1e-5, rtol=1e-5)

    text = clip.adapter.text
    exact = text.causal and text.pool in END_POOLS
    assert clip.speedups["truncate_text"] is exact
    assert clip.speedups["share_prefix"] is (exact and text.kv_blocks)
    if not text.causal:
        # Why the speed-ups are off: a bidirectional tower's features change when the padding is cut.
        tokens = tokenizer(TEXTS)
        index = clip.adapter.eot_index(clip.adapter.tokenize(TEXTS)) - clip.adapter.start_slot
        emb = text.token_embedding(tokens)
        with torch.no_grad():
            cut = encode_text_tower(text, emb, torch.clamp(index, max=tokens.shape[1] - 1), truncate=True)
        assert not torch.allclose(F.normalize(cut, dim=-1), reference, atol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("share_prefix", [True, False])
def test_prompt_learner_context_from_words_equals_the_sentence(case, share_prefix):
    """CoOp with its context initialised from "a photo of a" encodes exactly "a photo of a <class>.": the prompt
    layout (start slot, context, class, end) lines up with the tokenizer's, virtual start slot included."""
    model, tokenizer = case.build()
    clip = FrozenCLIP(model, tokenizer, "random", share_prefix=share_prefix, name=case.name)
    learner = CoOpPrompts(clip, n_ctx=4, ctx_init="a photo of a")
    learner.set_classnames(clip, CLASSNAMES)
    with torch.no_grad():
        learned = learner(clip)
        reference = F.normalize(model.encode_text(tokenizer([f"a photo of a {n}." for n in CLASSNAMES])), dim=-1)
    torch.testing.assert_close(learned, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", [c for c in CASES if vision_kind(open_clip.get_model_config(c.name)) != "timm"
                                  and c.layout in ("openai", "no-start+end")], ids=_ids)
def test_image_features_equal_encode_image(case):
    model, tokenizer = case.build()
    clip = FrozenCLIP(model, tokenizer, "random", name=case.name)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = F.normalize(model.encode_image(images), dim=-1)
    torch.testing.assert_close(clip.encode_image(images), reference, atol=1e-5, rtol=1e-5)
    assert (clip.adapter.vision.blocks is not None) == (vision_kind(open_clip.get_model_config(case.name)) == "vit")


COCA = [n for n in REFUSED if "hf_model_name" not in open_clip.get_model_config(n)["text_cfg"]]


@pytest.mark.parametrize("name", COCA)
def test_coca_is_refused_by_name(name):
    with pytest.raises(UnsupportedBackboneError, match=f"{name}.*CoCa"):
        FrozenCLIP(_tiny(name), SimpleTokenizer(), "random", name=name)


def test_hugging_face_text_tower_is_refused_by_name():
    model = build_tiny("EVA02-B-16")
    model.text = type("HFTextEncoder", (nn.Module,), {})()
    with pytest.raises(UnsupportedBackboneError, match="'xlm-roberta-base-ViT-B-32'.*Hugging Face"):
        text_tower(model, "xlm-roberta-base-ViT-B-32")


def test_pooling_that_is_not_the_end_of_text_is_refused():
    """argmax pooling with a tokenizer whose end token is not the largest id would pool inside the text."""
    model = build_tiny("ViT-B-32")
    with pytest.raises(UnsupportedBackboneError, match="'ViT-B-32'.*pools at the largest token id"):
        FrozenCLIP(model, EmulatedTokenizer(77, start=True, end_id=3), "random", name="ViT-B-32")


def test_sequence_first_transformer_is_refused_with_the_version_to_install():
    model = build_tiny("ViT-B-32")
    model.transformer.batch_first = False
    try:
        with pytest.raises(UnsupportedBackboneError, match=r"open_clip_torch>=2.26"):
            text_tower(model, "ViT-B-32")
    finally:
        model.transformer.batch_first = True


def test_speedups_off_are_logged_once_with_the_reason(caplog):
    model = build_tiny("ViT-B-16-SigLIP")
    with caplog.at_level(logging.INFO, logger="promptlab.models.frozen"):
        clip = FrozenCLIP(model, EmulatedTokenizer(64, start=False, end_id=1), "random", name="ViT-B-16-SigLIP")
    messages = [r.getMessage() for r in caplog.records if "speed-ups off" in r.getMessage()]
    assert messages == ["ViT-B-16-SigLIP: exact text speed-ups off: the text attention is bidirectional "
                        "(no causal mask)."]
    assert clip.speedups == {"truncate_text": False, "share_prefix": False, "text_pool": "last",
                             "causal_mask": False, "reason_off": messages[0].split(": ", 1)[1].rstrip(".")}


@pytest.mark.slow  # builds every family once (about 20 s): CI runs it with the slow suite
def test_committed_support_table_is_current():
    generated = markdown()
    committed = (ROOT / "docs" / "backbones.md").read_text()
    assert committed == generated, (
        "docs/backbones.md is stale: run `python -m promptlab.models.support --write docs/backbones.md`."
    )
    # The README carries the same table between its markers.
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- backbones:begin", 1)[1].split("<!-- backbones:end -->", 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("|")]
    assert rows == [line for line in generated.splitlines() if line.startswith("|")], (
        "README.md's backbone table is stale: copy the table of docs/backbones.md between its markers."
    )


@pytest.mark.parametrize("name", ["MobileCLIP-S1", "ViT-B-16-SigLIP"])
def test_shortened_sequences_are_refused_where_every_position_counts(name):
    """A bidirectional tower (or last-position pooling) must see all positions: a cut sequence is an error."""
    model = _tiny(name)
    length = open_clip.get_model_config(name)["text_cfg"].get("context_length", 77)
    bpe = name == "MobileCLIP-S1"
    tokenizer = SimpleTokenizer(context_length=length) if bpe else EmulatedTokenizer(length, False, 1)
    clip = FrozenCLIP(model, tokenizer, "random", name=name)
    tokens = clip.tokenize(TEXTS)
    emb, index = clip.embed_tokens(tokens), clip.eot_index(tokens)
    with pytest.raises(ValueError, match=f"{name}: the text tower needs all {length} positions"):
        clip.encode_token_embeddings(emb[:, :12], index)
