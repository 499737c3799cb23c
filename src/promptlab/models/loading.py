"""Build a frozen CLIP through open_clip: a model name plus pretrained tag, or a local weights file.

Supported sources (the `model` config group):
- `name` + `pretrained=<tag>`: open_clip's registry (e.g. ViT-B-16 + openai); needs network or the
  Hugging Face cache. OpenAI weights need QuickGELU (`quick_gelu: true`; docs/reference.md, "Pitfalls").
- `name` + `pretrained=<file>`: an open_clip-format state dict for that architecture.
- `weights_file=<file>`: an OpenAI-format file (the JIT archive the CLIP repo downloads, or a plain
  state dict); the architecture is inferred from tensor shapes, so no name is needed.
- `weights_file=builtin:toyclip`: the tiny CLIP pretrained on the toy world, shipped in the package.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import open_clip
import torch

from promptlab.errors import ClipLoadError  # re-exported: promptlab.models.loading.ClipLoadError
from promptlab.models.adapter import convert_weights_reference
from promptlab.models.frozen import FrozenCLIP
from promptlab.models.support import refuse_early

log = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "toy" / "assets"
BUILTIN_WEIGHTS = {"toyclip": ASSETS_DIR / "toyclip.pt"}
WEIGHT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_weights_file(weights_file: str) -> Path:
    """The path of model.weights_file: a local file, or one shipped in the package (`builtin:<name>`)."""
    if weights_file.startswith("builtin:"):
        key = weights_file.split(":", 1)[1]
        if key not in BUILTIN_WEIGHTS:
            raise ClipLoadError(f"Unknown builtin weights {weights_file!r}; known: "
                                f"{', '.join('builtin:' + k for k in BUILTIN_WEIGHTS)}.")
        return BUILTIN_WEIGHTS[key]
    path = Path(os.path.expanduser(weights_file))
    if not path.is_file():
        raise ClipLoadError(
            f"CLIP weights file not found: {path}. Pass the path of an OpenAI-format file "
            "(e.g. ViT-B-16.pt from the CLIP repository) as model.weights_file=/abs/path/ViT-B-16.pt."
        )
    return path


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _short(err: BaseException) -> str:
    """The exception type and its first line when short: torch's unpickling messages are long advice about
    `weights_only=False`, which is unsafe and never the fix for a file that is not a checkpoint."""
    first = (str(err).strip().splitlines() or [""])[0]
    if "weights_only" in first or not first or len(first) > 100:
        return type(err).__name__
    return f"{type(err).__name__}: {first}"


def _read_weights(path: Path) -> dict[str, torch.Tensor] | None:
    """The file's state dict (keys without "module."), read once; None for a TorchScript archive."""
    import zipfile

    # JIT archives hold a code/ folder next to the tensors; checked without torch.jit (deprecated).
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.split("/", 2)[1:2] == ["code"] for name in archive.namelist()):
                return None
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError) as err:
        raise ClipLoadError(
            f"{path} cannot be read as a PyTorch checkpoint ({_short(err)}): it is not a PyTorch file, or it is "
            "truncated (an interrupted download?). model.weights_file takes an OpenAI-format file (e.g. ViT-B-16.pt of "
            "the CLIP repository); for an open_clip-format file (.bin, .safetensors) set model.name and pass the "
            "file as model.pretrained=<path>."
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # open_clip's training checkpoints
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ClipLoadError(f"{path} holds a {type(state).__name__} that is not a state dict of tensors; pass a "
                            "CLIP checkpoint (OpenAI-format file or open_clip state dict).")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _is_openai_format(state: dict[str, torch.Tensor]) -> bool:
    keys = set(state)
    return "text_projection" in keys and ("visual.proj" in keys or "visual.attnpool.positional_embedding" in keys)


def _require_clip(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a state dict that has nothing of a CLIP (a classifier, an optimizer state, another model)."""
    has_text = any(k.startswith(("token_embedding.", "text.", "transformer.")) for k in state)
    has_vision = any(k.startswith("visual.") for k in state)
    if not (has_text and has_vision):
        sample = ", ".join(sorted(state)[:5]) or "none"
        raise ClipLoadError(
            f"{path} is a state dict but not a CLIP checkpoint: it has no {'text' if not has_text else 'vision'} "
            f"tower (keys: {sample}{', ...' if len(state) > 5 else ''}). Pass the weights of a CLIP model: an "
            "OpenAI-format file as model.weights_file, or an open_clip state dict as model.pretrained with model.name."
        )


def _check_architecture(state: dict[str, torch.Tensor], model: torch.nn.Module, name: str, path: Path) -> None:
    """A CLIP checkpoint of another architecture than `name`, caught before open_clip's resize/load fails."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or shapes):
        return
    if shapes:
        key = shapes[0]
        detail = f"{key} has shape {tuple(state[key].shape)}, {name} has {tuple(expected[key].shape)}"
    elif missing:
        detail = f"{len(missing)} tensors of {name} are missing (e.g. {missing[0]})"
    else:
        detail = f"{len(unexpected)} tensors are not in {name} (e.g. {unexpected[0]})"
    raise ClipLoadError(
        f"{path} is a CLIP checkpoint of another architecture than model.name={name!r}: {detail}. Set model.name to "
        "the architecture the file was trained as (open_clip.list_models() lists them), or pass an OpenAI-format "
        "file as model.weights_file=<path> to have the architecture inferred from it."
    )


def _meta_model(name: str) -> torch.nn.Module:
    """`name`'s architecture on the meta device: tensor names and shapes without memory or init cost."""
    from promptlab.models.support import model_class

    cfg = dict(open_clip.get_model_config(name))
    cfg.pop("custom_text", None)
    quick_gelu = bool(cfg.pop("quick_gelu", False))
    with torch.device("meta"):
        return model_class(open_clip.get_model_config(name))(**cfg, quick_gelu=quick_gelu)


def _architecture_id(model: torch.nn.Module) -> str:
    """Model class + a hash of every tensor name and shape: equal iff the architectures are the same."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(f"{key}:{tuple(value.shape)};".encode())
    return f"{type(model).__name__}:{digest.hexdigest()[:16]}"


def _load_openai_format(path: Path, state: dict[str, torch.Tensor] | None) -> torch.nn.Module:
    """An OpenAI-format checkpoint: plain state dicts are rebuilt directly (the architecture follows from
    tensor shapes); JIT archives go through open_clip.load_openai_model."""
    if state is None:  # a TorchScript archive
        return open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
    model = open_clip.model.build_model_from_openai_state_dict(state, quick_gelu=True, cast_dtype=None)
    return model.float().eval()


def _offline_message(name: str, tag: str, err: BaseException | None = None) -> str:
    why = f" ({_short(err)})" if err is not None else ""
    return (
        f"Cannot fetch pretrained weights '{tag}' for open_clip model '{name}'{why}: the Hugging Face hub could not "
        "be reached and the weights are not in its cache. Download the weights on a machine with network access and "
        f"pass the local file instead: model.weights_file=/path/to/{name}.pt for an OpenAI-format file (e.g. the CLIP "
        f"repository's {name.replace('-', '/', 1)} weights), or model.pretrained=/path/to/open_clip_pytorch_model.bin "
        f"for an open_clip-format state dict of {name}. The offline default is model=toyclip."
    )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("0", "", "false", "no", "off")


def _tag_is_cached(name: str, tag: str, download_dir: str | None) -> bool:
    """Whether the tag's weights are in the Hugging Face cache (no network)."""
    hub = (open_clip.get_pretrained_cfg(name, tag) or {}).get("hf_hub", "")
    if not hub:
        return False
    from huggingface_hub import try_to_load_from_cache

    files = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
    return any(isinstance(try_to_load_from_cache(hub.rstrip("/"), f, cache_dir=download_dir), str) for f in files)


def _known_name(name: str) -> None:
    if name not in open_clip.list_models():
        raise ClipLoadError(
            f"Unknown open_clip model name {name!r}. Known names include ViT-B-16, ViT-B-32, RN50, ViT-L-14 "
            "(open_clip.list_models() lists all)."
        )


def _from_local_file(name: str, path: Path, quick_gelu: bool, download_dir: str | None) -> torch.nn.Module:
    """`name`'s architecture with the weights of an open_clip-format file, checked before loading."""
    state = _read_weights(path)
    if state is None:
        raise ClipLoadError(f"{path} is a TorchScript archive (OpenAI format): pass it as model.weights_file=<path>.")
    _require_clip(state, path)
    skeleton = _meta_model(name)
    if "text_projection" in state and not hasattr(skeleton, "text_projection"):  # old layout for a CustomTextCLIP
        state = open_clip.model.convert_to_custom_text_state_dict(state)
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}  # HF buffers, as open_clip drops them
    _check_architecture(state, skeleton, name, path)  # before any weights are built or resized
    model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu, cache_dir=download_dir)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    _set_preprocess_from_tags(model, name)
    return model


def _set_preprocess_from_tags(model: torch.nn.Module, name: str) -> None:
    """A local file carries no preprocess config: take the one all of `name`'s pretrained tags agree on
    (SigLIP's mean/std 0.5 live in its tag, not its model config); open_clip would fall back to OpenAI's."""
    keys = ("mean", "std", "interpolation", "resize_mode")
    found = {json.dumps({k: open_clip.get_pretrained_cfg(name, tag).get(k) for k in keys})
             for tag in open_clip.list_pretrained_tags_by_model(name)}
    if len(found) != 1:
        if found:
            log.warning("%s: its pretrained tags disagree on image preprocessing; a local file gets open_clip's "
                        "defaults (OpenAI mean/std).", name)
        return
    agreed = {k: v for k, v in json.loads(found.pop()).items() if v is not None}
    if agreed:
        open_clip.set_model_preprocess_cfg(model, {**open_clip.get_model_preprocess_cfg(model), **agreed})


def _load_weights_file(
    name: str | None, weights_file: str, quick_gelu: bool, download_dir: str | None,
) -> tuple[torch.nn.Module, Any, str]:
    """model.weights_file: an OpenAI-format file (architecture read from it), or an open_clip-format one for the
    architecture `name`. Returns (model, tokenizer, weights id)."""
    path = resolve_weights_file(weights_file)
    state = _read_weights(path)
    if state is not None:
        _require_clip(state, path)
    if state is None or _is_openai_format(state):
        if not quick_gelu:
            raise ClipLoadError("OpenAI-format checkpoints are rebuilt with QuickGELU; set model.quick_gelu=true.")
        model = _load_openai_format(path, state)
        if name and name in open_clip.list_models():  # the config names an architecture: it must match
            _check_architecture(model.state_dict(), _meta_model(name), name, path)
        tokenizer = open_clip.get_tokenizer("ViT-B-32")  # OpenAI BPE tokenizer, context 77
        return model, tokenizer, f"sha256:{file_sha256(path)}"
    if not name or name not in open_clip.list_models():
        raise ClipLoadError(
            f"{path} is not an OpenAI-format checkpoint, so its architecture cannot be inferred: "
            "set model.name=<open_clip model name> and pass the file as model.pretrained=<path>."
        )
    refuse_early(name)
    model = _from_local_file(name, path, quick_gelu, download_dir)
    return model, open_clip.get_tokenizer(name), f"{name}:sha256:{file_sha256(path)}"


def _model_by_name(
    name: str, pretrained: str | None, quick_gelu: bool, download_dir: str | None,
) -> tuple[torch.nn.Module, str]:
    """model.name with model.pretrained a local file, an open_clip tag, or nothing (random weights). Returns
    (model, weights id)."""
    _known_name(name)
    refuse_early(name)  # an unsupported text tower is refused before any download
    local = Path(os.path.expanduser(pretrained)) if pretrained else None
    if local is not None and local.is_file():
        return _from_local_file(name, local, quick_gelu, download_dir), f"{name}:sha256:{file_sha256(local)}"
    if not pretrained:
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu, cache_dir=download_dir)
        return model, f"{name}:random"
    if not open_clip.get_pretrained_cfg(name, pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ClipLoadError(
            f"model.pretrained={pretrained!r} is neither a file nor a known tag for {name} "
            f"(known tags: {', '.join(tags) or 'none'})."
        )
    if _hub_offline() and not _tag_is_cached(name, pretrained, download_dir):
        # The user's own switch, read now (huggingface_hub reads it once, at import): fail fast.
        raise ClipLoadError(_offline_message(name, pretrained) + " HF_HUB_OFFLINE is set.")
    try:
        # The hub is simply tried (a socket probe says "offline" behind proxies where downloads work);
        # its own errors, and open_clip's, are turned into what to pass instead.
        model = open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=quick_gelu, cache_dir=download_dir)
    except Exception as err:
        raise ClipLoadError(_offline_message(name, pretrained, err)) from err
    return model, f"{name}:{pretrained}"


def load_clip(
    name: str | None = None,
    pretrained: str | None = None,
    weights_file: str | None = None,
    quick_gelu: bool = True,
    weights_dtype: str = "fp32",
    truncate_text: bool = True,
    download_dir: str | None = None,
    device: str | torch.device = "cpu",
    share_prefix: bool = True,
) -> FrozenCLIP:
    """Load a CLIP model through open_clip and freeze it (no gradients, eval mode)."""
    if weights_dtype not in WEIGHT_DTYPES:
        raise ClipLoadError(f"model.weights_dtype={weights_dtype!r}; expected one of {sorted(WEIGHT_DTYPES)}.")
    if weights_file:
        model, tokenizer, weights_id = _load_weights_file(name, weights_file, quick_gelu, download_dir)
    elif not name:
        raise ClipLoadError("Set model.name (an open_clip model name such as ViT-B-16) or model.weights_file.")
    else:
        model, weights_id = _model_by_name(name, pretrained, quick_gelu, download_dir)
        tokenizer = open_clip.get_tokenizer(name)
    model = model.to(device=device)
    if weights_dtype != "fp32":
        # The reference's conversion (clip.model.convert_weights): layer norms, embeddings and the logit
        # scale stay float32; a plain .to(fp16) changed 1 of 900 zero-shot predictions against it.
        convert_weights_reference(model, WEIGHT_DTYPES[weights_dtype])
    return FrozenCLIP(model, tokenizer, weights_id=weights_id, truncate_text=truncate_text,
                      share_prefix=share_prefix, name=name or "openai-format", architecture=_architecture_id(model))


def load_clip_from_config(cfg, device: str | torch.device = "cpu") -> FrozenCLIP:
    """Build from the `model` config group (a DictConfig or mapping)."""
    return load_clip(
        name=cfg.get("name"),
        pretrained=cfg.get("pretrained"),
        weights_file=cfg.get("weights_file"),
        quick_gelu=bool(cfg.get("quick_gelu", True)),
        weights_dtype=cfg.get("weights_dtype", "fp32"),
        truncate_text=bool(cfg.get("truncate_text", True)),
        download_dir=cfg.get("download_dir"),
        device=device,
        share_prefix=bool(cfg.get("share_prefix", True)),
    )
