"""Counting a phrase's tokens the way the model will: with the model's own tokenizer, without loading weights.

One rule for compose-time validation (config/validate.py: an init phrase against n_ctx, before anything is
loaded) and for the learners (FrozenCLIP.token_count when the context is built), so the two never disagree on
backbones whose tokenizer is not OpenAI's (SigLIP, CLIPA, the multilingual models).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any


def phrase_token_count(tokenizer: Any, text: str) -> int | None:
    """Tokens of `text` without start/end under `tokenizer`: open_clip's BPE tokenizers (`encode`); None for
    tokenizers without a bare encode (Hugging Face ones), whose count needs the model's token layout."""
    encode = getattr(tokenizer, "encode", None)
    return len(encode(text)) if encode is not None else None


@lru_cache(maxsize=16)
def _open_clip_tokenizer(name: str) -> Any:
    import open_clip

    return open_clip.get_tokenizer(name)


def token_counter(model_cfg: Any) -> Callable[[str], int] | None:
    """`count(text)` for the model a `model` config node loads, or None when the tokenizer cannot be had
    without loading the model or a download (Hugging Face tokenizers): the learner checks then, at build.

    An open_clip name uses that model's tokenizer (for OpenAI's architectures: OpenAI's BPE, which loading also
    pairs with OpenAI-format files); a checkpoint under another name (the toy CLIP) OpenAI's BPE, as loading
    does (models/loading.py)."""
    import open_clip

    name = str(model_cfg.get("name") or "")
    if name not in open_clip.list_models():
        if not model_cfg.get("weights_file"):
            return None  # an unknown name: loading refuses it with its own message
        name = "ViT-B-32"  # what loading pairs with an OpenAI-format file of an architecture open_clip does not name
    text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name"):
        return None
    encode = getattr(_open_clip_tokenizer(name), "encode", None)
    return None if encode is None else (lambda text: len(encode(text)))
