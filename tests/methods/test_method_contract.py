"""The method contract: every registered method builds from its config through the registry, trains a step
through `training_loss`, runs end to end (record, novel classes or a stated reason, saved tensors that reload to
bit-identical logits), and no module probes a learner for undeclared attributes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from promptlab.api import PromptClassifier, load_prompt
from promptlab.config import compose
from promptlab.engine.build import build_learner
from promptlab.methods.base import (
    TUNING_SOURCES,
    Loss,
    PromptLearner,
    RunContext,
    TrainingStep,
    logits_from_features,
    tuned_on,
)
from promptlab.methods.registry import learner_class, registered_methods
from promptlab.train import execute
from tests.runs import TINY_WORLD, compose_cfg, workspace_overrides

SRC = Path(__file__).resolve().parents[2] / "src" / "promptlab"
NAMES = ["red circle", "blue square", "green star"]
PROBES = ("getattr", "hasattr")


def test_no_module_probes_a_learner_with_getattr_or_hasattr() -> None:
    """The engine reads only what PromptLearner declares: a getattr/hasattr whose object names a learner is refused."""
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            probe = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in PROBES
            if probe and node.args and "learner" in ast.unparse(node.args[0]).lower():
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, found


def test_the_registry_holds_every_method_with_its_config() -> None:
    methods = registered_methods()
    assert {"zeroshot", "coop", "cocoop", "kgcoop", "prograd", "vpt", "ivlp", "ivlp_language", "maple", "promptsrc",
            "linear_probe", "tip_adapter", "tip_adapter_f"} <= set(methods)
    for name, spec in methods.items():
        assert issubclass(spec.learner, PromptLearner), name
        assert spec.config.name == name


@pytest.mark.parametrize("name", sorted(registered_methods()))
def test_every_registered_method_builds_and_takes_a_training_step(name: str, random_clip) -> None:
    cfg = compose([f"method={name}"], check=False)
    for key in ("depth", "text_depth", "vision_depth"):  # the random CLIP has 2 blocks a tower
        if key in cfg.method.learner and cfg.method.learner[key]:
            cfg.method.learner[key] = min(int(cfg.method.learner[key]), 2)
    learner = build_learner(cfg.method, RunContext(clip=random_clip, classnames=NAMES, init_seed=0))
    learner.set_classnames(random_clip, NAMES)
    images = torch.randn(2, 3, random_clip.image_size, random_clip.image_size)
    labels = torch.tensor([0, 2])
    feats = learner.encode_images(random_clip, images)
    assert feats.shape == (2, random_clip.embed_dim)
    if learner.direct_logits:
        if learner.fits_features:
            return  # scored after its closed-form fit (tests/methods/test_baselines.py)
        text, logits = None, learner.logits(random_clip, feats)
    else:
        text = learner(random_clip, feats).float()
        logits = logits_from_features(feats, text, random_clip.logit_scale())
    loss = learner.training_loss(random_clip, TrainingStep(images, feats, text, logits, labels))
    assert isinstance(loss, Loss) and "ce" in loss.terms and torch.isfinite(loss.total)
    if learner.trainable:
        loss.optimised.backward()
        assert any(p.grad is not None for p in learner.parameters() if p.requires_grad), name
    assert isinstance(learner.summary(), dict) and isinstance(learner.notes(), list)


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("contract_runs")  # one small toy world for every method's run


@pytest.mark.parametrize("name", sorted(registered_methods()))
def test_every_registered_method_runs_and_its_saved_tensors_reload_bit_identically(name: str, toy_runs: Path) -> None:
    """Base-to-novel on the toy world with the shipped toy CLIP, one epoch: a record with the method's section,
    a novel-class evaluation or the learner's stated reason, and (for learners with tensors) a prompt file that
    reloads through the public API to the same logits, bit for bit."""
    cfg = compose_cfg([*workspace_overrides(toy_runs), *TINY_WORLD, "shots=2", f"method={name}", f"run_name={name}"])
    if cfg.method.get("optim") is not None and cfg.method.optim.get("epochs"):
        cfg.method.optim.epochs = 1
    run_dir = toy_runs / name
    fields, objects = execute(cfg, run_dir)
    learner = objects.learner

    assert fields["summary"]["method"] == name
    assert learner.summary().items() <= fields["summary"].items()
    # Where each tuned value's data came from, and the strongest source in the summary (a table column).
    assert set(fields["tuning"].values()) <= set(TUNING_SOURCES[1:])
    assert learner.tuned_values().items() <= fields["tuning"].items()
    assert fields["summary"]["tuned_on"] == tuned_on(fields["tuning"])
    evaluations = {e["name"]: e for e in fields["evaluations"]}
    assert evaluations["base"]["n_images"] > 0 and 0.0 <= evaluations["base"]["acc"] <= 100.0
    if learner.scores_unseen_classes:
        assert not evaluations["novel"].get("not_applicable") and 0.0 <= evaluations["novel"]["acc"] <= 100.0
    else:
        assert evaluations["novel"]["not_applicable"] == learner.unseen_classes_reason != ""

    prompt = run_dir / "prompt_learner.pt"
    assert prompt.is_file() == learner.trainable
    if not learner.trainable:
        return
    reloaded = load_prompt(prompt)
    live = PromptClassifier(clip=objects.parts.clip, learner=learner, config=cfg.method, device=torch.device("cpu"))
    live.set_classnames(reloaded.classnames)  # evaluation left the learner on the last split's classes
    learner.eval()
    images = torch.randn(3, 3, live.clip.image_size, live.clip.image_size, generator=torch.Generator().manual_seed(0))
    assert torch.equal(live.logits(images), reloaded.logits(images))


FITTED = sorted(name for name, spec in registered_methods().items()
                if learner_class(compose([f"method={name}"], check=False).method).fits_features)


@pytest.mark.parametrize("name", FITTED)
def test_a_fitted_methods_seeds_make_one_table_row(name: str, toy_runs: Path) -> None:
    """What a fit chooses from data (a searched alpha, the epoch kept) goes to the record's `fit`, not to the
    summary, whose keys split a table's rows when they vary within a method: two seeds give one row."""
    from promptlab.results.table import build_table
    from promptlab.train import run

    records = [run(compose_cfg([*workspace_overrides(toy_runs), *TINY_WORLD, "shots=2", f"method={name}",
                                f"seed={seed}", f"run_name={name}_seed{seed}"])) for seed in (1, 2)]
    rows = [row for row in build_table(records, "base2novel").rows if not row.is_average]
    assert len(rows) == 1 and rows[0].n_seeds == (2,), [row.keys for row in rows]
    assert all(record["fit"] for record in records)  # what each fit chose is recorded, seed by seed


# The worked example of CONTRIBUTING.md ("Add a method"): one class pair and a decorator, nothing else.
from dataclasses import dataclass, field  # noqa: E402

from promptlab.config.method import MethodConf  # noqa: E402
from promptlab.methods.coop import CoOpLearnerConf, CoOpPrompts  # noqa: E402
from promptlab.methods.registry import register_method, unregister_method  # noqa: E402


@dataclass
class AnchoredLearnerConf(CoOpLearnerConf):
    _target_: str = "tests.methods.test_method_contract.AnchoredPrompts"
    n_ctx: int = 4
    weight: float = 1.0


@dataclass
class AnchoredMethodConf(MethodConf):
    name: str = "anchored_example"
    display_name: str = "Anchored CoOp"
    learner: AnchoredLearnerConf = field(default_factory=AnchoredLearnerConf)


class AnchoredPrompts(CoOpPrompts):
    def __init__(self, clip, weight: float = AnchoredLearnerConf.weight, **coop) -> None:
        super().__init__(clip, **coop)
        self.weight = weight

    def training_loss(self, clip, step):
        loss = super().training_loss(clip, step)
        loss.terms["anchor"] = self.weight * step.text_features.pow(2).mean()
        return loss


def test_the_contributing_example_registers_composes_and_trains(random_clip) -> None:
    register_method(AnchoredMethodConf)(AnchoredPrompts)
    try:
        cfg = compose(["method=anchored_example", "method.learner.weight=2.0"])
        assert cfg.method.display_name == "Anchored CoOp" and cfg.method.learner.weight == 2.0
        learner = build_learner(cfg.method, RunContext(clip=random_clip, classnames=NAMES, init_seed=0))
        learner.set_classnames(random_clip, NAMES)
        feats = learner.encode_images(random_clip, torch.randn(2, 3, random_clip.image_size, random_clip.image_size))
        text = learner(random_clip, feats).float()
        logits = logits_from_features(feats, text, random_clip.logit_scale())
        loss = learner.training_loss(random_clip, TrainingStep(None, feats, text, logits, torch.tensor([0, 1])))
        assert list(loss.terms) == ["ce", "anchor"]
        assert float(loss.total.detach()) == pytest.approx(float((loss.terms["ce"] + loss.terms["anchor"]).detach()))
    finally:
        unregister_method("anchored_example")
