"""Renamed config keys: each old name still works (mapped to its new key, one warning), a contradiction is refused,
and what promptlab writes holds only the new names."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from promptlab.config import deprecated
from promptlab.config.deprecated import RENAMED, apply_renames, rename_mapping
from promptlab.config.registry import compose, plain, typed
from promptlab.engine.build import build_learner, learner_options
from promptlab.errors import ConfigError
from promptlab.launch import is_launch_key
from promptlab.methods.base import RunContext
from promptlab.results.records import config_hash
from tests.runs import compose_cfg, tiny_overrides

PINNED = ["sweep_name=fixed"]  # the default is the time of composition

# old override, new override, what else the key needs (its method)
ALIASES = [
    ("model.checkpoint=/models/ViT-B-16.pt", "model.weights_file=/models/ViT-B-16.pt", []),
    ("model.cache_dir=/downloads", "model.download_dir=/downloads", []),
    ("method.learner.checkpoint_blocks=true", "method.learner.recompute_blocks=true", ["method=vpt"]),
    ("method.learner.checkpoint_blocks=true", "method.learner.recompute_blocks=true", ["method=maple"]),
    ("method.learner.checkpoint_chunks=true", "method.learner.recompute_chunks=true", ["method=cocoop"]),
    ("eval_cache=false", "test_feature_cache=false", []),
]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    # Each old key warns once per process: start every test with none warned yet.
    monkeypatch.setattr(deprecated, "_warned", set())


def _key(override: str) -> str:
    return override.split("=", 1)[0]


@pytest.mark.parametrize(("old", "new", "extra"), ALIASES, ids=[f"{_key(a[0])}-{a[2]}" for a in ALIASES])
def test_an_old_key_gives_the_config_of_its_new_key(old, new, extra, caplog):
    with caplog.at_level(logging.WARNING, logger="promptlab"):
        through_old = compose([*extra, *PINNED, old], check=False)
    through_new = compose([*extra, *PINNED, new], check=False)
    assert plain(through_old) == plain(through_new)
    assert config_hash(plain(through_old)) == config_hash(plain(through_new))
    new_key, new_value = new.split("=", 1)
    assert str(OmegaConf.select(through_old, new_key)).lower() == new_value.lower()  # it reached the new key
    assert OmegaConf.select(through_old, _key(old)) is None  # and left the old one
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warnings) == 1 and _key(old) in warnings[0] and new_key in warnings[0]


def test_the_warning_is_logged_once_per_key(caplog):
    with caplog.at_level(logging.WARNING, logger="promptlab"):
        compose(["eval_cache=false"], check=False)
        compose(["eval_cache=false"], check=False)
    assert sum("eval_cache" in r.getMessage() for r in caplog.records) == 1


def test_old_and_new_key_with_different_values_is_an_error():
    with pytest.raises(ConfigError, match=r"model\.checkpoint=/a\.pt and model\.weights_file=/b\.pt.*give "
                                          r"model\.weights_file only"):
        compose(["model.checkpoint=/a.pt", "model.weights_file=/b.pt"], check=False)
    with pytest.raises(ConfigError, match="eval_cache=True and test_feature_cache=False"):
        compose(["eval_cache=true", "test_feature_cache=false"], check=False)
    # Saying the same thing twice is no contradiction.
    same = compose(["model.checkpoint=/a.pt", "model.weights_file=/a.pt"], check=False)
    assert same.model.weights_file == "/a.pt" and same.model.checkpoint is None


def test_an_old_key_replaces_a_presets_value_of_the_new_key():
    """model=toyclip sets weights_file in its YAML; the user's old key is what they asked for, not a conflict."""
    cfg = compose(["model=toyclip", "model.checkpoint=/mine.pt"], check=False)
    assert cfg.model.weights_file == "/mine.pt"


def test_without_overrides_the_new_key_counts_as_given_when_it_differs_from_its_default():
    cfg = compose(["test_feature_cache=false"], check=False)
    cfg.eval_cache = True  # e.g. set by hand after composing
    with pytest.raises(ConfigError, match="eval_cache"):
        apply_renames(cfg)
    plain_cfg = compose([], check=False)
    plain_cfg.eval_cache = False
    assert apply_renames(plain_cfg).test_feature_cache is False


def test_saved_configs_and_prompt_model_keys_are_read_under_the_new_names():
    saved = plain(compose(["method=vpt"], check=False))
    saved["model"]["checkpoint"] = saved["model"].pop("weights_file")
    saved["model"]["cache_dir"] = "/downloads"
    del saved["model"]["download_dir"]
    saved["eval_cache"] = saved.pop("test_feature_cache")
    saved["method"]["learner"]["checkpoint_blocks"] = True
    del saved["method"]["learner"]["recompute_blocks"]
    cfg = typed(saved)
    assert cfg.model.weights_file == "builtin:toyclip" and cfg.model.download_dir == "/downloads"
    assert cfg.method.learner.recompute_blocks is True and cfg.test_feature_cache is True
    assert "checkpoint" not in plain(cfg)["model"] and "eval_cache" not in plain(cfg)
    # The Python API's model_overrides take the old names too.
    assert rename_mapping({"checkpoint": "/m.pt"}, root="model") == {"weights_file": "/m.pt"}


def test_the_learner_is_built_with_the_new_argument(random_clip):
    cfg = compose(["method=vpt", "method.learner.checkpoint_blocks=true", "method.learner.vision_depth=1"],
                  check=False)
    options = learner_options(cfg.method)
    assert options["recompute_blocks"] is True and "checkpoint_blocks" not in options
    learner = build_learner(cfg.method, RunContext(clip=random_clip, classnames=["a", "b"], init_seed=0))
    assert learner.recompute_blocks is True


def test_the_table_renames_within_one_node_and_every_old_key_composes_empty():
    cfg = compose([], check=False)
    for old, new in RENAMED.items():
        assert old.rpartition(".")[0] == new.rpartition(".")[0], (old, new)
        if old.startswith("method.learner."):
            continue  # per method: checked through vpt and cocoop above
        parent, leaf = old.rpartition(".")[::2]
        node = OmegaConf.select(cfg, parent) if parent else cfg
        assert leaf in node and node[leaf] is None, old  # in the schema (it composes), empty by default
    # A launch key keeps out of the resume hash and the job folders under its old name too.
    for old, new in RENAMED.items():
        assert is_launch_key(old) == is_launch_key(new), (old, new)
    assert is_launch_key("eval_cache")


def test_the_record_stores_only_the_new_keys(tmp_path: Path):
    """A run given the old names (set on the config as a hand-written one would) records the new ones only."""
    from promptlab.train import run

    cfg = compose_cfg([*tiny_overrides(tmp_path), "method=zeroshot"])
    weights = cfg.model.weights_file
    cfg.model.weights_file = None
    cfg.model.checkpoint = weights
    cfg.test_feature_cache = True
    cfg.eval_cache = False
    record = run(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "runs" / str(cfg.run_name) / "metrics.json").read_text())
    for config in (record["config"], saved["config"]):
        assert config["model"]["weights_file"] == weights and "checkpoint" not in config["model"]
        assert config["test_feature_cache"] is False and "eval_cache" not in config
        assert "cache_dir" not in config["model"] and config["model"]["download_dir"] is None


def test_a_job_recorded_under_the_old_names_is_still_skipped_on_resume(tmp_path: Path):
    """The resume hash reads the renamed keys under their old names: the hash promptlab wrote before the renames
    (its plain config held `model.checkpoint`, `model.cache_dir`, ...) is the hash a rerun computes now."""
    from promptlab.launch import LAUNCH_KEYS
    from promptlab.train import run

    cfg = compose_cfg([*tiny_overrides(tmp_path), "method=zeroshot", "run_name=old_names"])
    first = run(cfg)
    old_style = plain(cfg)
    old_style["model"]["checkpoint"] = old_style["model"].pop("weights_file")
    old_style["model"]["cache_dir"] = old_style["model"].pop("download_dir")
    old_style["eval_cache"] = old_style.pop("test_feature_cache")
    assert first["config_hash"] == config_hash(old_style, exclude=LAUNCH_KEYS)
    assert first["config_hash"] != config_hash(plain(cfg), exclude=LAUNCH_KEYS)  # the new names alone differ
    again = run(compose_cfg([*tiny_overrides(tmp_path), "method=zeroshot", "run_name=old_names"]))
    assert again["timings"] == first["timings"]  # read back from the record, not run again
