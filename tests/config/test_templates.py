"""Hand-written prompts: template sets, template files, per-class description files, their cache, and how a
run records which prompts it used (promptlab.methods.prompts, the `prompts` config node)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.errors import ConfigCompositionException

from promptlab.config import compose
from promptlab.errors import ConfigError
from promptlab.methods import KgCoOpPrompts, ZeroShotPrompts
from promptlab.methods.prompts import (
    TextPrompts,
    class_embeddings,
    clear_text_cache,
    read_template_file,
    resolve_templates,
)
from tests.runs import compose_cfg, tiny_overrides

CLASSNAMES = ["red circle", "golden_retriever", "blue square", "x"]


@pytest.fixture(autouse=True)
def _fresh_cache():
    # Every comparison below must compute both sides, not read one from the other's cache entry.
    clear_text_cache()
    yield
    clear_text_cache()


def _zeroshot(clip, templates, **kwargs) -> torch.Tensor:
    learner = ZeroShotPrompts(clip, templates, **kwargs)
    learner.set_classnames(clip, CLASSNAMES)
    clear_text_cache()
    return learner.text_features


def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_an_ensemble_of_one_template_equals_the_single_template_exactly(random_clip, tmp_path):
    single = _zeroshot(random_clip, ["a photo of a {}."])
    names = [n.replace("_", " ") for n in CLASSNAMES]
    assert torch.equal(single, F.normalize(random_clip.encode_text([f"a photo of a {n}." for n in names]), dim=-1))
    path = tmp_path / "one.txt"
    path.write_text("# my templates\n\na photo of a {}.\n", encoding="utf-8")
    from_file = resolve_templates(str(path), ["{} texture."])
    assert from_file == ["a photo of a {}."]
    assert torch.equal(_zeroshot(random_clip, from_file), single)


def test_an_ensemble_is_the_normalised_mean_of_normalised_embeddings(random_clip):
    templates = ["a photo of a {}.", "a drawing of the {}."]
    names = [n.replace("_", " ") for n in CLASSNAMES]
    per = torch.stack([random_clip.encode_text([t.format(n) for n in names]) for t in templates])
    torch.testing.assert_close(_zeroshot(random_clip, templates), F.normalize(per.mean(0), dim=-1))


def test_one_description_per_class_equals_that_sentence_as_a_template(random_clip, tmp_path):
    # Names matched case-insensitively with "_" read as a space.
    keys = {"red circle": "Red_Circle", "golden_retriever": "golden retriever", "blue square": "BLUE square", "x": "x"}
    path = _write(tmp_path / "desc.json", {keys[n]: [f"a photo of a {n.replace('_', ' ')}."] for n in CLASSNAMES})
    described = _zeroshot(random_clip, ["{} texture."], descriptions=str(path))
    assert torch.equal(described, _zeroshot(random_clip, ["a photo of a {}."]))


def test_descriptions_average_their_sentences_and_may_add_the_templates(random_clip, tmp_path):
    sentences = {n: [f"a {n} in the wild.", f"a close-up of a {n}."] for n in CLASSNAMES}
    path = _write(tmp_path / "desc.json", sentences)
    templates = ["a photo of a {}.", "art of a {}."]
    for combine in (False, True):
        got = _zeroshot(random_clip, templates, descriptions=str(path), combine_templates=combine)
        for i, name in enumerate(CLASSNAMES):
            texts = sentences[name] + ([t.format(name.replace("_", " ")) for t in templates] if combine else [])
            want = F.normalize(random_clip.encode_text(texts).mean(0), dim=-1)
            torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)


def test_missing_classes_fall_back_to_the_templates_with_one_warning(random_clip, tmp_path, caplog):
    path = _write(tmp_path / "desc.json", {"red circle": ["a red round thing."], "x": ["the letter x."],
                                           "not a class": ["unused"]})
    templates = ["a photo of a {}.", "a {}."]
    learner = ZeroShotPrompts(random_clip, templates, descriptions=str(path))
    with caplog.at_level(logging.WARNING, logger="promptlab.methods.prompts"):
        learner.set_classnames(random_clip, CLASSNAMES)
        learner.set_classnames(random_clip, CLASSNAMES)  # the base classes again (evaluation): no second warning
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "golden_retriever, blue square" in warnings[0].getMessage()
    assert len(learner.text_prompts.notes) == 1 and "2 of 4 classes" in learner.text_prompts.notes[0]
    clear_text_cache()
    fallback = _zeroshot(random_clip, templates)
    torch.testing.assert_close(learner.text_features[1:3], fallback[1:3], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(learner.text_features[0], fallback[0])
    summary = learner.text_prompts.summary()
    assert summary["n_templates"] == 2
    assert summary["descriptions_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_kgcoop_targets_use_the_same_prompts(random_clip, tmp_path):
    path = _write(tmp_path / "desc.json", {"red circle": ["a red round thing."]})
    kg = KgCoOpPrompts(random_clip, ["a photo of a {}.", "art of a {}."], descriptions=str(path))
    kg.set_classnames(random_clip, CLASSNAMES)
    clear_text_cache()
    zs = _zeroshot(random_clip, ["a photo of a {}.", "art of a {}."], descriptions=str(path))
    assert torch.equal(kg.zeroshot_features, zs)


def test_text_embeddings_are_cached_per_weights_prompts_and_classes(random_clip, monkeypatch):
    calls = []
    encode = random_clip.encode_text
    monkeypatch.setattr(random_clip, "encode_text", lambda texts, **kw: calls.append(len(texts)) or encode(texts))
    first = class_embeddings(random_clip, ["a photo of a {}."], CLASSNAMES)
    again = class_embeddings(random_clip, ["a photo of a {}."], CLASSNAMES)
    assert len(calls) == 1 and torch.equal(first, again)
    class_embeddings(random_clip, ["a photo of a {}."], CLASSNAMES[:2])  # another class list
    class_embeddings(random_clip, ["a {}."], CLASSNAMES)  # another template
    assert len(calls) == 3


def test_clip80_is_open_clips_80_templates():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    cfg = compose(["prompts.templates=clip80"])
    templates = list(cfg.method.learner.templates)
    assert len(templates) == 80 == len(OPENAI_IMAGENET_TEMPLATES)
    assert templates == [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    assert templates[0] == "a bad photo of a {}."


# CLIP paper's per-dataset ensembles (openai/CLIP data/prompts.md; ImageNet: the 80 templates).
ENSEMBLE_SIZES = {"caltech101": 34, "dtd": 8, "eurosat": 3, "fgvc_aircraft": 2, "food101": 1, "oxford_flowers": 1,
                  "oxford_pets": 1, "stanford_cars": 8, "sun397": 2, "ucf101": 48, "imagenet": 80, "toyworld": 9}


@pytest.mark.parametrize("dataset", sorted(ENSEMBLE_SIZES))
def test_dataset_ensembles_compose_for_zeroshot_and_kgcoop(dataset):
    for method in ("zeroshot", "kgcoop"):
        cfg = compose([f"dataset={dataset}", f"method={method}", "prompts.templates=dataset_ensemble"])
        templates = list(cfg.method.learner.templates)
        assert len(templates) == ENSEMBLE_SIZES[dataset]
        assert all("{}" in t for t in templates)


def test_the_default_is_the_datasets_own_template():
    cfg = compose(["dataset=dtd"])
    assert list(cfg.method.learner.templates) == ["{} texture."]
    assert cfg.method.learner.descriptions is None and cfg.method.learner.descriptions_sha256 is None


@pytest.mark.parametrize(("overrides", "needle"), [
    (["prompts.templates=clip81"], "prompts.templates='clip81': expected one of single, clip80, dataset_ensemble"),
    (["prompts.templates=dataset_ensemble", "dataset=imagefolder", "dataset.dataset_dir=/x"], "no ensemble_templates"),
    (["prompts.descriptions=/no/such/file.json"], "prompts.descriptions=/no/such/file.json: no such file"),
    (["prompts.combine=true"], "prompts.combine=true without prompts.descriptions"),
])
def test_bad_prompt_settings_fail_at_compose_time_naming_the_key(overrides, needle, monkeypatch):
    import promptlab.models.loading as loading

    def no_loading(*args, **kwargs):  # composing must not reach the model
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_clip", no_loading)
    with pytest.raises((ConfigError, ConfigCompositionException)) as info:
        compose(overrides)
    assert needle in str(info.value)


def test_bad_files_are_refused(tmp_path, random_clip):
    with pytest.raises(ConfigError, match="no other braces"):
        resolve_templates(str(_write(tmp_path / "t.json", ["a {0} photo of {}."])), None)
    with pytest.raises(ConfigError, match="JSON list"):
        read_template_file(_write(tmp_path / "u.json", {"a": 1}))
    with pytest.raises(ConfigError, match="same class"):
        TextPrompts(["{}"], str(_write(tmp_path / "d.json", {"Red_Circle": ["a"], "red circle": ["b"]})))
    with pytest.raises(ConfigError, match="non-empty list"):
        TextPrompts(["{}"], str(_write(tmp_path / "e.json", {"red circle": []})))


def test_a_description_file_changed_after_composing_is_refused(tmp_path):
    path = _write(tmp_path / "desc.json", {"red circle": ["a red round thing."]})
    cfg = compose([f"prompts.descriptions={path}"])
    sha = cfg.method.learner.descriptions_sha256
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    _write(path, {"red circle": ["something else."]})
    with pytest.raises(ConfigError, match="changed after the config was composed"):
        TextPrompts(["a {}."], str(path), sha)


def test_zero_shot_runs_record_which_prompts_ran(tmp_path):
    from promptlab.train import run

    base = [*tiny_overrides(tmp_path), "method=zeroshot"]
    record = run(compose_cfg([*base, "prompts.templates=clip80", "run_name=clip80"]))
    assert record["status"] == "complete" and "hm" in record["metrics"]
    assert record["config"]["prompts"]["templates"] == "clip80"
    assert len(record["config"]["method"]["learner"]["templates"]) == 80

    path = _write(tmp_path / "desc.json", {"red circle": ["a round red shape."], "Blue_Square": ["a blue box."]})
    record = run(compose_cfg([*base, f"prompts.descriptions={path}", "run_name=described"]))
    assert record["status"] == "complete" and "hm" in record["metrics"]
    learner = record["config"]["method"]["learner"]
    assert learner["descriptions"] == str(path)
    assert learner["descriptions_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert learner["templates"] == ["a photo of a {}."]


def test_a_saved_config_with_prompts_is_typed_again(tmp_path):
    from omegaconf import OmegaConf

    from promptlab.config.registry import plain, typed

    path = _write(tmp_path / "desc.json", {"red circle": ["a round red shape."]})
    saved = plain(compose(["prompts.templates=clip80", f"prompts.descriptions={path}"]))
    again = typed(json.loads(json.dumps(saved)))
    assert len(again.method.learner.templates) == 80
    assert again.method.learner.descriptions_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # A record written before the prompts node existed reads as the dataset's own template, no descriptions.
    old = json.loads(json.dumps(saved))
    del old["prompts"]
    for key in ("descriptions", "descriptions_sha256", "combine_templates"):
        del old["method"]["learner"][key]
    old["method"]["learner"]["templates"] = ["a photo of a {}."]
    learner = OmegaConf.to_container(typed(old).method.learner, resolve=True)
    assert learner["templates"] == ["a photo of a {}."] and learner["descriptions"] is None
