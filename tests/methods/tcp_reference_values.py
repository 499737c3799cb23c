"""Print the reference TCP's outputs for the fixed case of tests/methods/test_tcp.py (REFERENCE there holds them).

    git clone https://github.com/htyao89/Textual-based_Class-aware_prompt_tuning /tmp/tcp_ref   # at bd97bec
    PYTHONPATH=src python tests/methods/tcp_reference_values.py /tmp/tcp_ref

It builds the reference's own modules from that checkout, trainers/tcp.py (PromptLearner, TextEncoder,
CustomCLIP) on trainers/clip_text/model.py (CLIP, ResidualAttentionBlock_MaPLe), with the text weights of
tests/methods/test_tcp.py's random ViT-B/16-sized text tower. What is patched for a CPU without Dassl, and nothing else:
- the `dassl.*` imports are stand-ins (only the trainer class and its registry decorator use them), and so is
  `pkg_resources` (clip/clip.py, imported by trainers/tcp.py as clip_ori and unused, reads its `packaging`);
- `Tensor.cuda` / `Module.cuda` return their input (PromptLearner.__init__: `clip_model_.cuda()`,
  `prompts_.cuda()`);
- `load_clip_to_cpu` returns the same random reference CLIP (the reference reloads the same checkpoint there);
- CustomCLIP.image_encoder is an identity, so the "images" are the fixed image features of the test.
Precision fp32 (TRAINER.COCOOP.PREC), as promptlab's default.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.methods.test_tcp import (  # noqa: E402 - after the path
    CLASSNAMES,
    IMAGE_FEATURES,
    LABELS,
    fill_learned,
    reference_sized_model,
)


def _stub_dassl() -> None:
    registry = types.SimpleNamespace(register=lambda: (lambda cls: cls))
    modules = {
        "dassl": {}, "dassl.engine": {"TRAINER_REGISTRY": registry, "TrainerX": object},
        "dassl.metrics": {"compute_accuracy": None},
        "dassl.utils": {"load_pretrained_weights": None, "load_checkpoint": None},
        "dassl.optim": {"build_optimizer": None, "build_lr_scheduler": None},
    }
    import packaging.version

    modules["pkg_resources"] = {"packaging": packaging}
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module


def _cfg() -> types.SimpleNamespace:
    ns = types.SimpleNamespace
    # scripts/base2new_train.sh: N_CTX 4, CSC False, W 1.0, CTP end; the TCP config: CTX_INIT False.
    coop = ns(N_CTX=4, CTX_INIT=False, CSC=False, W=1.0, CLASS_TOKEN_POSITION="end", PREC="fp32")
    return ns(TRAINER=ns(COOP=coop, COCOOP=ns(PREC="fp32")), INPUT=ns(SIZE=(224, 224)),
              DATASET=ns(NAME="OxfordPets"), MODEL=ns(BACKBONE=ns(NAME="ViT-B/16")))


def main(checkout: str) -> None:
    sys.path.insert(0, checkout)
    _stub_dassl()
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    from trainers import tcp as ref
    from trainers.clip_text import model as ref_model

    source = reference_sized_model()
    clip = ref_model.CLIP(embed_dim=512, image_resolution=224, vision_layers=1, vision_width=64,
                          vision_patch_size=32, context_length=77, vocab_size=49408, transformer_width=512,
                          transformer_heads=8, transformer_layers=12)
    text = {k: v for k, v in source.state_dict().items() if not k.startswith("visual.")}
    missing, unexpected = clip.load_state_dict(text, strict=False)
    assert not unexpected and all(k.startswith("visual.") for k in missing), (missing, unexpected)
    clip.eval()
    ref.load_clip_to_cpu = lambda cfg: clip

    torch.manual_seed(0)
    custom = ref.CustomCLIP(_cfg(), CLASSNAMES, clip)
    custom.image_encoder = nn.Identity()
    learner = custom.prompt_learner
    with torch.no_grad():
        fill_learned(dict(learner.named_parameters()))
    out: dict[str, object] = {
        "n_params": sum(p.numel() for p in learner.parameters()),
        "param_shapes": {k: list(p.shape) for k, p in learner.named_parameters()},
        "suffix_len": int(learner.token_suffix.shape[1]),
        "eot": learner.tokenized_prompts.argmax(dim=-1).tolist(),
    }
    custom.eval()
    with torch.no_grad():
        out["frozen"] = learner.text_features[:, :4].tolist()
        out["class_tokens"] = learner()[1][:, :2, :3].tolist()
        out["logits"] = custom(IMAGE_FEATURES).tolist()
    custom.train()
    logits, loss = custom(IMAGE_FEATURES, LABELS)
    loss.backward()
    out["loss"] = float(loss)
    out["ce"] = float(torch.nn.functional.cross_entropy(logits, LABELS))
    out["grad_norm"] = {k: float(p.grad.norm()) for k, p in learner.named_parameters()}
    out["grad_ctx_0"] = learner.ctx.grad[0, :4].tolist()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
