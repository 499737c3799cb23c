"""Build a frozen CLIP through open_clip: a model name plus pretrained tag, or a local checkpoint file.

Supported sources (the `model` config group):
- `name` + `pretrained=<tag>`: open_clip's registry (e.g. ViT-B-16 + openai); needs network or the
  Hugging Face cache. OpenAI weights need QuickGELU (`quick_gelu: true`; docs/reference.md, "Pitfalls").
- `name` + `pretrained=<file>`: an open_clip-format state dict for that architecture.
- `checkpoint=<file>`: an OpenAI-format file (the JIT archive the CLIP repo downloads, or a plain
  state dict); the architecture is inferred from tensor shapes, so no name is needed.
- `checkpoint=builtin:toyclip`: the tiny CLIP pretrained on the toy world, shipped in the package.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
from pathlib import Path

import open_clip
import torch

from promptlab.errors import ClipLoadError  # re-exported: promptlab.models.loading.ClipLoadError
from promptlab.models.frozen import FrozenCLIP

ASSETS_DIR = Path(__file__).resolve().parent.parent / "toy" / "assets"
BUILTIN_CHECKPOINTS = {"toyclip": ASSETS_DIR / "toyclip.pt"}
WEIGHT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_checkpoint(checkpoint: str) -> Path:
    if checkpoint.startswith("builtin:"):
        key = checkpoint.split(":", 1)[1]
        if key not in BUILTIN_CHECKPOINTS:
            raise ClipLoadError(f"Unknown builtin checkpoint {checkpoint!r}; known: "
                                f"{', '.join('builtin:' + k for k in BUILTIN_CHECKPOINTS)}.")
        return BUILTIN_CHECKPOINTS[key]
    path = Path(os.path.expanduser(checkpoint))
    if not path.is_file():
        raise ClipLoadError(
            f"CLIP checkpoint file not found: {path}. Pass the path of an OpenAI-format file "
            "(e.g. ViT-B-16.pt from the CLIP repository) as model.checkpoint=/abs/path/ViT-B-16.pt."
        )
    return path


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _is_openai_format(path: Path) -> bool:
    """OpenAI-format files are JIT archives or flat state dicts with top-level text keys."""
    import zipfile

    # JIT archives hold a code/ folder next to the tensors; checked without torch.jit (deprecated).
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.split("/", 2)[1:2] == ["code"] for name in archive.namelist()):
                return True
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as err:
        # A file the user named that is no (or a truncated) PyTorch file. torch's own message for it is a
        # long text about weights_only, which is not what needs fixing: keep only short messages.
        first = (str(err).strip().splitlines() or [""])[0]
        reason = f"{type(err).__name__}: {first}" if first and len(first) <= 100 else type(err).__name__
        raise ClipLoadError(
            f"{path} cannot be read as a PyTorch checkpoint ({reason}). model.checkpoint takes an OpenAI-format "
            "file (e.g. ViT-B-16.pt of the CLIP repository); for an open_clip-format file (.bin, .safetensors) "
            "set model.name and pass the file as model.pretrained=<path>."
        ) from err
    if not isinstance(state, dict):
        raise ClipLoadError(f"{path} holds a {type(state).__name__}, not a state dict; pass a CLIP checkpoint.")
    if "state_dict" in state:
        state = state["state_dict"]
    keys = {k.removeprefix("module.") for k in state}
    return "text_projection" in keys and ("visual.proj" in keys or "visual.attnpool.positional_embedding" in keys)


def _load_openai_format(path: Path) -> torch.nn.Module:
    """An OpenAI-format checkpoint: plain state dicts are rebuilt directly (the architecture follows from
    tensor shapes); JIT archives go through open_clip.load_openai_model."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError:  # a TorchScript archive
        return open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
    if "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = open_clip.model.build_model_from_openai_state_dict(state, quick_gelu=True, cast_dtype=None)
    return model.float().eval()


def _network_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _tag_is_cached(name: str, tag: str, cache_dir: str | None) -> bool:
    cfg = open_clip.get_pretrained_cfg(name, tag)
    hub = cfg.get("hf_hub", "")
    if not hub:
        return False
    from huggingface_hub import try_to_load_from_cache

    repo = hub.rstrip("/")
    for filename in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors"):
        hit = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
        if isinstance(hit, str):
            return True
    return False


def _offline_message(name: str, tag: str) -> str:
    return (
        f"Cannot fetch pretrained weights '{tag}' for open_clip model '{name}': no network and not in the "
        "Hugging Face cache. Download the weights on a machine with network access and pass the local file "
        f"instead: model.checkpoint=/path/to/{name}.pt for an OpenAI-format file (e.g. the CLIP repository's "
        f"{name.replace('-', '/', 1)} weights), or model.pretrained=/path/to/open_clip_pytorch_model.bin for an "
        f"open_clip-format state dict of {name}. The offline default is model=toyclip."
    )


def load_clip(
    name: str | None = None,
    pretrained: str | None = None,
    checkpoint: str | None = None,
    quick_gelu: bool = True,
    weights_dtype: str = "fp32",
    truncate_text: bool = True,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
    share_prefix: bool = True,
) -> FrozenCLIP:
    """Load a CLIP model through open_clip and freeze it (no gradients, eval mode)."""
    if weights_dtype not in WEIGHT_DTYPES:
        raise ClipLoadError(f"model.weights_dtype={weights_dtype!r}; expected one of {sorted(WEIGHT_DTYPES)}.")
    if checkpoint:
        path = resolve_checkpoint(checkpoint)
        if _is_openai_format(path):
            model = _load_openai_format(path)
            if not quick_gelu:
                raise ClipLoadError("OpenAI-format checkpoints are rebuilt with QuickGELU; set model.quick_gelu=true.")
            tokenizer = open_clip.get_tokenizer("ViT-B-32")  # OpenAI BPE tokenizer, context 77
            checkpoint_id = f"sha256:{file_sha256(path)}"
        else:
            if not name:
                raise ClipLoadError(
                    f"{path} is not an OpenAI-format checkpoint, so its architecture cannot be inferred: "
                    "set model.name=<open_clip model name> and pass the file as model.pretrained=<path>."
                )
            return load_clip(name, str(path), None, quick_gelu, weights_dtype, truncate_text, cache_dir, device,
                             share_prefix)
    else:
        if not name:
            raise ClipLoadError("Set model.name (an open_clip model name such as ViT-B-16) or model.checkpoint.")
        if name not in open_clip.list_models():
            raise ClipLoadError(
                f"Unknown open_clip model name {name!r}. Known names include ViT-B-16, ViT-B-32, RN50, ViT-L-14 "
                "(open_clip.list_models() lists all)."
            )
        checkpoint_id = f"{name}:random"
        if pretrained:
            local = Path(os.path.expanduser(pretrained))
            if local.is_file():
                checkpoint_id = f"{name}:sha256:{file_sha256(local)}"
                pretrained = str(local)
            elif open_clip.get_pretrained_cfg(name, pretrained):
                if not _tag_is_cached(name, pretrained, cache_dir) and not _network_reachable():
                    raise ClipLoadError(_offline_message(name, pretrained))
                checkpoint_id = f"{name}:{pretrained}"
            else:
                tags = open_clip.list_pretrained_tags_by_model(name)
                raise ClipLoadError(
                    f"model.pretrained={pretrained!r} is neither a file nor a known tag for {name} "
                    f"(known tags: {', '.join(tags) or 'none'})."
                )
        try:
            model = open_clip.create_model(
                name, pretrained=pretrained or None, force_quick_gelu=quick_gelu, cache_dir=cache_dir
            )
        except RuntimeError as err:
            if pretrained and "download" in str(err).lower():
                raise ClipLoadError(_offline_message(name, pretrained)) from err
            raise
        tokenizer = open_clip.get_tokenizer(name)
    model = model.to(device=device, dtype=WEIGHT_DTYPES[weights_dtype])
    return FrozenCLIP(model, tokenizer, checkpoint_id=checkpoint_id, truncate_text=truncate_text,
                      share_prefix=share_prefix)


def load_clip_from_config(cfg, device: str | torch.device = "cpu") -> FrozenCLIP:
    """Build from the `model` config group (a DictConfig or mapping)."""
    return load_clip(
        name=cfg.get("name"),
        pretrained=cfg.get("pretrained"),
        checkpoint=cfg.get("checkpoint"),
        quick_gelu=bool(cfg.get("quick_gelu", True)),
        weights_dtype=cfg.get("weights_dtype", "fp32"),
        truncate_text=bool(cfg.get("truncate_text", True)),
        cache_dir=cfg.get("cache_dir"),
        device=device,
        share_prefix=bool(cfg.get("share_prefix", True)),
    )
