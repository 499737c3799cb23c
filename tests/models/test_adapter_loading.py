"""Loading through the adapter: one test per error message, fp16 as the reference converts, preprocessing and
the backbone fingerprint, and the new model configs."""

from __future__ import annotations

import open_clip
import pytest
import torch

from promptlab.config.registry import compose
from promptlab.errors import ClipLoadError
from promptlab.models import load_clip
from promptlab.models import loading as loading_module
from promptlab.models.loading import BUILTIN_WEIGHTS

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]


@pytest.fixture(scope="module")
def toy_state() -> dict[str, torch.Tensor]:
    return torch.load(BUILTIN_WEIGHTS["toyclip"], weights_only=True)


def test_random_bytes_are_not_a_checkpoint_and_unsafe_loading_is_not_suggested(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
                     .numpy().tobytes())
    with pytest.raises(ClipLoadError, match="cannot be read as a PyTorch checkpoint") as info:
        load_clip(weights_file=str(path))
    assert "weights_only" not in str(info.value)


@pytest.mark.parametrize("name", [None, "toyclip", "ViT-B-16"])
def test_a_state_dict_that_is_not_a_clip_is_named_as_such(tmp_path, name):
    path = tmp_path / "classifier.pt"
    torch.save({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}, path)
    with pytest.raises(ClipLoadError, match="not a CLIP checkpoint.*fc.bias"):
        load_clip(name=name, weights_file=str(path))


def test_a_clip_of_another_architecture_is_refused_before_loading(tmp_path, toy_state):
    # An OpenAI-format file named as ViT-B-16 by the config ...
    path = tmp_path / "toy.pt"
    torch.save(toy_state, path)
    with pytest.raises(ClipLoadError, match="another architecture than model.name='ViT-B-16'.*shape"):
        load_clip(name="ViT-B-16", weights_file=str(path))
    # ... and an fp16 file passed as open_clip weights of ViT-B-16 (used to fail in resize_pos_embed).
    half = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({k: v.half() for k, v in toy_state.items()}, half)
    with pytest.raises(ClipLoadError, match="another architecture than model.name='ViT-B-16'"):
        load_clip(name="ViT-B-16", pretrained=str(half))


def test_open_clip_format_file_loads_with_its_name(tmp_path, monkeypatch):
    """model.name + model.pretrained=<file>: the checked path gives the model the file was saved from."""
    cfg = {"embed_dim": 16, "custom_text": True,
           "vision_cfg": {"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 32},
           "text_cfg": {"width": 32, "heads": 2, "layers": 1}}
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "tiny-test", cfg)  # restored after the test
    torch.manual_seed(0)
    source = open_clip.create_model("tiny-test", pretrained=None)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(source.state_dict(), path)
    clip = load_clip(name="tiny-test", pretrained=str(path), quick_gelu=False)
    tokens = clip.tokenize(["a photo of a dog."])
    with torch.no_grad():
        reference = torch.nn.functional.normalize(source.eval().encode_text(tokens), dim=-1)
    torch.testing.assert_close(clip.encode_text(["a photo of a dog."]), reference, atol=1e-5, rtol=1e-5)
    assert clip.fingerprint["weights"].startswith("tiny-test:sha256:")


def test_hub_errors_are_caught_and_say_what_to_pass(monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this file")

    monkeypatch.setattr(loading_module.open_clip, "create_model", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ClipLoadError, match=r"Cannot fetch pretrained weights 'openai'.*OSError.*model.weights_file="):
        load_clip(name="ViT-B-32", pretrained="openai")
    # HF_HUB_OFFLINE is the user's switch: read at call time, the load fails fast without trying the hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading_module, "_tag_is_cached", lambda *args: False)
    monkeypatch.setattr(loading_module.open_clip, "create_model", None)
    with pytest.raises(ClipLoadError, match=r"Cannot fetch pretrained weights 'openai'.*HF_HUB_OFFLINE is set"):
        load_clip(name="ViT-B-32", pretrained="openai")
    assert not hasattr(loading_module, "socket") and not hasattr(loading_module, "_network_reachable")


def _reference_converted(name: str) -> bool:
    """OpenAI CLIP's convert_weights, written out for the ViT layout: Conv/Linear weights and biases,
    MultiheadAttention in_proj weight/bias (out_proj is a Linear), text_projection and proj."""
    linear = (".attn.out_proj.", ".mlp.c_fc.", ".mlp.c_proj.")
    return (
        name.endswith((".attn.in_proj_weight", ".attn.in_proj_bias"))
        or any(part in name for part in linear)
        or name in {"visual.conv1.weight", "visual.proj", "text_projection"}
    )


def test_fp16_converts_exactly_the_reference_set():
    full = load_clip(weights_file="builtin:toyclip")
    half = load_clip(weights_file="builtin:toyclip", weights_dtype="fp16")
    names = dict(half.model.named_parameters())
    converted = {n for n, p in names.items() if p.dtype == torch.float16}
    expected = {n for n in names if _reference_converted(n)}
    assert converted == expected
    kept = set(names) - converted  # layer norms, embeddings, positional embeddings, logit_scale
    assert {"token_embedding.weight", "positional_embedding", "logit_scale", "visual.class_embedding",
            "ln_final.weight", "visual.positional_embedding"} <= kept
    assert all(names[n].dtype == torch.float32 for n in kept)
    assert half.dtype == torch.float16  # the compute dtype, used in feature-cache keys
    texts = ["a photo of a red circle.", "a photo of a blue star."]
    torch.testing.assert_close(half.encode_text(texts), full.encode_text(texts), atol=5e-3, rtol=0)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(half.encode_image(images), full.encode_image(images), atol=5e-3, rtol=0)


def test_fingerprint_and_preprocessing_come_from_the_loaded_model(tmp_path, toy_state):
    toy = load_clip(weights_file="builtin:toyclip")
    assert toy.fingerprint["architecture"].startswith("CLIP:") and toy.fingerprint["weights"].startswith("sha256:")
    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in toy_state.items()}
    path = tmp_path / "other.pt"
    torch.save(other, path)
    moved = load_clip(weights_file=str(path))
    assert moved.fingerprint["architecture"] == toy.fingerprint["architecture"]
    assert moved.fingerprint["weights"] != toy.fingerprint["weights"]
    cfg = toy.preprocess_cfg
    assert cfg["size"] == 32 == toy.image_size and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == pytest.approx(OPENAI_MEAN) and cfg["resize_mode"] == "shortest"


def test_preprocessing_of_a_local_siglip_file_comes_from_its_tag():
    model = open_clip.CLIP(16, {"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 32},
                           {"width": 32, "heads": 2, "layers": 1})
    loading_module._set_preprocess_from_tags(model, "ViT-B-16-SigLIP")
    cfg = open_clip.get_model_preprocess_cfg(model)
    assert tuple(cfg["mean"]) == (0.5, 0.5, 0.5) and cfg["resize_mode"] == "squash"


@pytest.mark.parametrize(("option", "name"), [("eva02_b16", "EVA02-B-16"), ("siglip_b16", "ViT-B-16-SigLIP"),
                                              ("convnext_b", "convnext_base")])
def test_new_model_configs_compose(option, name):
    cfg = compose([f"model={option}"])
    assert cfg.model.name == name and cfg.model.quick_gelu is False
    assert cfg.model.pretrained in open_clip.list_pretrained_tags_by_model(name)


def test_a_prompt_from_another_backbone_is_refused_unless_not_strict(tmp_path, toy_state):
    from promptlab.models.frozen import BackboneMismatchError

    toy = load_clip(weights_file="builtin:toyclip")
    saved = toy.fingerprint
    assert toy.check_fingerprint(saved, "prompt_learner.pt") == []
    path = tmp_path / "other.pt"
    torch.save({k: v * 1.01 if v.is_floating_point() else v for k, v in toy_state.items()}, path)
    other = load_clip(weights_file=str(path))  # same architecture and width, other weights
    with pytest.raises(BackboneMismatchError, match="prompt_learner.pt was learned on another backbone.*weights"):
        other.check_fingerprint(saved, "prompt_learner.pt")
    assert other.check_fingerprint(saved, "prompt_learner.pt", strict=False)[0].startswith("weights:")
    with pytest.raises(BackboneMismatchError, match="no backbone fingerprint.*load_prompt_strict=false"):
        toy.check_fingerprint(None, "old.pt")
    assert set(toy.record()) == {"name", "fingerprint", "speedups", "preprocess"}


@pytest.mark.parametrize(("name", "tag", "reason"), [("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k", "Hugging Face"),
                                                     ("coca_ViT-B-32", "laion2b_s13b_b90k", "CoCa")])
def test_unsupported_text_towers_are_refused_by_name_before_any_download(monkeypatch, name, tag, reason):
    from promptlab.models import UnsupportedBackboneError

    def no_download(*args, **kwargs):
        raise AssertionError("create_model must not run for a refused model")

    monkeypatch.setattr(loading_module.open_clip, "create_model", no_download)
    with pytest.raises(UnsupportedBackboneError, match=f"'{name}' is not supported for text-side methods: .*{reason}"):
        load_clip(name=name, pretrained=tag)
