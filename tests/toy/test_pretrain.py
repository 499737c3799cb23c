"""The tiny CLIP: OpenAI-format round trip, the trimmed text encoder, and the committed checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from promptlab.toy import pretrain as P
from promptlab.toy import world as tw

ASSET = P.ASSET_DIR / "toyclip.pt"
RECORD = P.ASSET_DIR / "toyclip.json"
TINY_ARCH = P.TinyClipArch(vision_layers=1, text_layers=1, embed_dim=32)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[open_clip.model.CLIP, Path]:
    torch.manual_seed(0)
    pool = P.render_pool(images_per_class=1, image_size=32, seed=0)
    model = P.build_tiny_clip(TINY_ARCH)
    settings = P.TrainSettings(steps=3, batch_size=16, warmup_steps=1, log_every=1, eval_every=3)
    history = P.train_tiny_clip(model, pool, settings, seed=0)
    assert [h["step"] for h in history] == [1, 2, 3]
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    P.save_openai_checkpoint(model, path)
    return model, path


def _probe_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    examples = list(tw.generate_split(tw.ToyWorldSpec(test_per_class=1), "test"))[:8]
    images = P.images_to_tensor(torch.stack([torch.from_numpy(e.image) for e in examples]))
    tokens = P.tokenize([f"a photo of a {e.toy_class.name}." for e in examples] + ["a small red ring."])
    return images, tokens


def test_checkpoint_round_trips_through_open_clip_loader(tiny_checkpoint) -> None:
    model, path = tiny_checkpoint
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert all(t.dtype == torch.float16 for t in saved.values())
    loaded = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
    loaded_state = loaded.state_dict()
    assert loaded_state.keys() == saved.keys()
    for name, tensor in saved.items():
        assert torch.equal(loaded_state[name], tensor.float()), name
    assert loaded.visual.transformer.resblocks[0].attn.num_heads == 1
    assert loaded.transformer.layers == TINY_ARCH.text_layers

    # The same weights rounded to fp16 in the model we built give identical features; the fp32
    # original differs only by that rounding.
    rounded = P.build_tiny_clip(TINY_ARCH)
    rounded.load_state_dict({k: v.float() for k, v in saved.items()})
    images, tokens = _probe_inputs()
    with torch.no_grad():
        for encode in ("encode_image", "encode_text"):
            inputs = images if encode == "encode_image" else tokens
            ref = getattr(rounded.eval(), encode)(inputs, normalize=True)
            torch.testing.assert_close(getattr(loaded, encode)(inputs, normalize=True), ref)
            original = getattr(model.eval(), encode)(inputs, normalize=True)
            torch.testing.assert_close(original, ref, atol=2e-2, rtol=0)


def test_trimmed_text_encoder_matches_full_context(tiny_checkpoint) -> None:
    model, _ = tiny_checkpoint
    _, tokens = _probe_inputs()
    with torch.no_grad():
        torch.testing.assert_close(P.encode_text_trimmed(model, tokens), model.encode_text(tokens))


def test_clip_loss_prefers_matching_pairs() -> None:
    features = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(2.0)
    matched = P.clip_loss(features, features, scale)
    shuffled = P.clip_loss(features, features.roll(1, dims=0), scale)
    assert matched < shuffled


def test_arch_rejects_widths_the_openai_loader_cannot_rebuild() -> None:
    with pytest.raises(ValueError, match="text_width=96"):
        P.TinyClipArch(text_width=96)
    with pytest.raises(ValueError, match="patch_size=5"):
        P.TinyClipArch(patch_size=5)


def test_missing_checkpoint_error_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        P.load_toyclip(tmp_path / "nothing.pt")


def test_committed_asset_matches_its_record() -> None:
    record = json.loads(RECORD.read_text())
    assert P.file_sha256(ASSET) == record["sha256"]
    assert ASSET.stat().st_size == record["file_bytes"] <= 8_000_000
    for key in ("command", "seed", "architecture", "parameters", "train", "threads", "wall_time_s", "versions"):
        assert key in record, key
    zero_shot = record["zero_shot"]["grid6_spurious1"]
    assert zero_shot["base"] >= 80 and zero_shot["novel"] >= 80


def test_config_defaults_are_the_committed_settings() -> None:
    record = json.loads(RECORD.read_text())
    with initialize_config_dir(config_dir=str(P.CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="pretrain")
    assert cfg.seed == record["seed"]
    assert {**OmegaConf.to_container(cfg.model), "quick_gelu": True} == {
        k: v for k, v in record["architecture"].items() if not k.endswith("_heads")
    }
    assert OmegaConf.to_container(cfg.train) == record["train"]
    assert cfg.data.images_per_class == record["data"]["images_per_class"]


def test_committed_asset_is_far_above_chance_zero_shot() -> None:
    model = P.load_toyclip()
    spec = tw.ToyWorldSpec(train_per_class=0, val_per_class=0, test_per_class=4, seed=7)
    accuracy = P.world_zero_shot(model, spec)
    # 18-way among base and among novel: chance is 5.6 %.
    assert accuracy["base"] > 60 and accuracy["novel"] > 60, accuracy


@pytest.mark.slow
def test_cli_runs_a_tiny_pretraining(tmp_path: Path) -> None:
    overrides = [
        "train.steps=2",
        "train.batch_size=16",
        "train.warmup_steps=1",
        "data.images_per_class=1",
        "data.holdout_per_class=1",
        "report.test_per_class=1",
        "model.vision_layers=1",
        "model.text_layers=1",
        f"hydra.run.dir={tmp_path}",
        f"asset_dir={tmp_path / 'assets'}",
    ]
    subprocess.run([sys.executable, "-m", "promptlab.toy.pretrain", *overrides], check=True, timeout=300)
    record = json.loads((tmp_path / "assets" / "toyclip.json").read_text())
    assert record["command"].startswith("python -m promptlab.toy.pretrain train.steps=2")
    assert P.file_sha256(tmp_path / "assets" / "toyclip.pt") == record["sha256"]
    assert set(record["zero_shot"]) >= {"grid6_spurious1", "grid6_spurious0", "ext_spurious1"}
