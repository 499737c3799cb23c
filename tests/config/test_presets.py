"""The paper presets (conf/experiment/*_paper.yaml) are the published protocols: each one's sweep expands to the
published jobs, and every setting of every job matches the reference's value, written out below with the
reference file it comes from (docs/reproduce.md has the same table for readers).

The fast tests compose every method of every preset on ImageNet and on one other dataset; the slow one composes
every distinct job configuration (method x dataset) and checks it with the same table."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import open_clip
import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

import promptlab
from promptlab.config.registry import choice, register_configs
from promptlab.config.validate import validate
from promptlab.engine.build import effective_lr, resolve_epochs

CONF = Path(promptlab.__file__).parent / "conf"

ELEVEN = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
          "sun397", "dtd", "eurosat", "ucf101"]
CROSS_TARGETS = sorted(set(ELEVEN) - {"imagenet"})
DG_TARGETS = ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]

# The reference's values (github.com/KaiyangZhou/CoOp at ff61507 and Dassl.pytorch at c61a1b5).
# Shared by every CoOp/CoCoOp config: configs/trainers/{CoOp,CoCoOp}/*.yaml (OPTIM, INPUT, DATALOADER.TEST) and
# Dassl dassl/config/defaults.py (SGD momentum, weight decay).
COMMON = {
    "lr": 0.002,  # OPTIM.LR
    "optimizer": "torch.optim.SGD",  # OPTIM.NAME "sgd"
    "momentum": 0.9,  # Dassl OPTIM.MOMENTUM
    "weight_decay": 5e-4,  # Dassl OPTIM.WEIGHT_DECAY
    "nesterov": False,  # Dassl OPTIM.SGD_NESTEROV
    "warmup_epochs": 1,  # OPTIM.WARMUP_EPOCH, WARMUP_TYPE "constant"
    "warmup_lr": 1e-5,  # OPTIM.WARMUP_CONS_LR
    "schedule_unit": "epoch",  # LR_SCHEDULER "cosine", stepped once per epoch
    "eval_batch_size": 100,  # DATALOADER.TEST.BATCH_SIZE
    "augment": "coop",  # INPUT.TRANSFORMS ["random_resized_crop", "random_flip", "normalize"]
}
# configs/trainers/CoOp/vit_b16_ctxv1.yaml (ImageNet: vit_b16_ep50_ctxv1.yaml), named for CoOp in
# scripts/cocoop/base2new_train.sh and xd_train.sh.
COOP_CTXV1 = {**COMMON, "n_ctx": 4, "ctx_init": "a photo of a", "csc": False, "class_token_position": "end",
              "batch_size": 32, "epochs": {"imagenet": 50, "other": 200}}
# configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml, every dataset (LOADEP=10 in base2new_test.sh).
COCOOP = {**COMMON, "n_ctx": 4, "ctx_init": "a photo of a", "batch_size": 1, "epochs": {"imagenet": 10, "other": 10}}
# configs/trainers/CoOp/rn50_ep50.yaml (1 shot), rn50_ep100.yaml (2, 4 shots), rn50.yaml (8, 16 shots); ImageNet
# rn50_ep50.yaml at every shot count (COOP.md); scripts/coop/main.sh with "end 16 <shots> False" (COOP.md).
COOP_M16 = {**COMMON, "n_ctx": 16, "ctx_init": None, "csc": False, "class_token_position": "end", "batch_size": 32,
            "epochs_by_shots": {"imagenet": {1: 50, 2: 50, 4: 50, 8: 50, 16: 50},
                                "other": {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}}}
# lpclip/feat_extractor.py (features of clip_model.visual, not normalised, test transform), linear_probe.py.
LINEAR_PROBE = {"normalize": False, "augment": "none", "c_grid": [1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6],
                "search_steps": 8}
# trainers/zsclip.py: one hand-written template per dataset (the dataset config's), nothing trained.
ZEROSHOT = {"templates": "single", "epochs": 0}

PRESETS: dict[str, dict[str, Any]] = {
    # CoCoOp paper, Table 1; scripts/cocoop/base2new_{train,test}.sh: SHOTS=16, seeds 1-3, ViT-B/16.
    "base2novel_paper": {
        "jobs": 99, "model": "ViT-B-16", "protocol": "base2novel", "datasets": ELEVEN, "shots": [16],
        "seeds": [1, 2, 3], "targets": [], "methods": {"zeroshot": ZEROSHOT, "coop": COOP_CTXV1, "cocoop": COCOOP},
    },
    # CoOp paper, Figure 3; scripts/coop/main.sh (seeds 1-3), COOP.md (shots 1/2/4/8/16, RN50 configs).
    "fewshot_paper": {
        "jobs": 330, "model": "RN50", "protocol": "fewshot", "datasets": ELEVEN, "shots": [1, 2, 4, 8, 16],
        "seeds": [1, 2, 3], "targets": [], "methods": {"coop": COOP_M16, "linear_probe": LINEAR_PROBE},
    },
    # CoCoOp paper, Table 2; scripts/cocoop/xd_train.sh (imagenet, SHOTS=16), xd_test.sh (the 10 targets).
    "cross_dataset_paper": {
        "jobs": 9, "model": "ViT-B-16", "protocol": "cross_dataset", "datasets": ["imagenet"], "shots": [16],
        "seeds": [1, 2, 3], "targets": CROSS_TARGETS,
        "methods": {"zeroshot": ZEROSHOT, "coop": COOP_CTXV1, "cocoop": COCOOP},
    },
    # CoCoOp paper, Table 3: the ImageNet models of Table 2 on ImageNet-V2, -Sketch, -A, -R.
    "dg_paper": {
        "jobs": 9, "model": "ViT-B-16", "protocol": "domain_generalization", "datasets": ["imagenet"],
        "shots": [16], "seeds": [1, 2, 3], "targets": DG_TARGETS,
        "methods": {"zeroshot": ZEROSHOT, "coop": COOP_CTXV1, "cocoop": COCOOP},
    },
}


@contextmanager
def _hydra() -> Iterator[None]:
    register_configs()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_module(config_module="promptlab.conf", version_base="1.3"):
        yield


@pytest.fixture(scope="module")
def hydra_ready() -> Iterator[None]:
    with _hydra():
        yield


_JOBS: dict[str, list[dict[str, str]]] = {}


def sweep_jobs(experiment: str) -> list[dict[str, str]]:
    """The jobs `promptlab-train -m experiment=<experiment>` launches, expanded as Hydra's basic sweeper does."""
    if experiment not in _JOBS:
        _JOBS[experiment] = _expand(experiment)
    return _JOBS[experiment]


def _expand(experiment: str) -> list[dict[str, str]]:
    full = hydra_compose("train", [f"experiment={experiment}"], return_hydra_config=True)
    params = full.hydra.sweeper.params or {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    return [dict(item.split("=", 1) for item in job) for job in jobs]


def job_config(experiment: str, job: dict[str, str]) -> DictConfig:
    return hydra_compose("train", [f"experiment={experiment}", *(f"{k}={v}" for k, v in job.items())])


def check_job(cfg: DictConfig, preset: dict[str, Any]) -> None:
    """Every setting of one composed job against the preset's reference table."""
    method = cfg.method.name
    ref = preset["methods"][method]
    dataset = cfg.dataset.name
    shots = int(cfg.shots)
    kind = "imagenet" if dataset == "imagenet" else "other"
    # Backbone and input: the OpenAI weights with QuickGELU, 224 x 224 (INPUT.SIZE).
    assert (cfg.model.name, cfg.model.pretrained, cfg.model.quick_gelu) == (preset["model"], "openai", True)
    assert open_clip.get_model_config(cfg.model.name)["vision_cfg"]["image_size"] == 224
    assert choice(cfg.protocol.name) == preset["protocol"]
    assert sorted(cfg.protocol.targets) == sorted(preset["targets"])
    assert shots in preset["shots"] and int(cfg.seed) in preset["seeds"]
    # Evaluated model: the last epoch (Dassl TEST.FINAL_MODEL "last_step"; LOADEP = MAX_EPOCH in the scripts).
    assert choice(cfg.validation.selection) == "last"
    if method == "zeroshot":
        assert cfg.prompts.templates == ref["templates"]
        assert list(cfg.method.learner.templates) == list(cfg.dataset.templates)
        assert resolve_epochs(cfg.method.optim, cfg.dataset, shots) == ref["epochs"]
        return
    if method == "linear_probe":
        learner = cfg.method.learner
        assert learner.normalize is ref["normalize"]
        assert list(learner.c_grid) == ref["c_grid"] and learner.search_steps == ref["search_steps"]
        assert choice(cfg.method.loader.augment) == ref["augment"]
        return
    learner, optim, loader = cfg.method.learner, cfg.method.optim, cfg.method.loader
    assert learner.n_ctx == ref["n_ctx"] and learner.ctx_init == ref["ctx_init"]
    if "csc" in ref:
        assert learner.csc is ref["csc"] and choice(learner.class_token_position) == ref["class_token_position"]
    epochs = ref["epochs"][kind] if "epochs" in ref else ref["epochs_by_shots"][kind][shots]
    assert resolve_epochs(optim, cfg.dataset, shots) == epochs
    assert loader.batch_size == ref["batch_size"] and loader.eval_batch_size == ref["eval_batch_size"]
    assert math.isclose(effective_lr(cfg.method), ref["lr"], rel_tol=1e-12)
    assert optim.optimizer._target_ == ref["optimizer"]
    assert (optim.optimizer.momentum, optim.optimizer.weight_decay, optim.optimizer.nesterov) == (
        ref["momentum"], ref["weight_decay"], ref["nesterov"])
    assert (optim.warmup_epochs, optim.warmup_lr) == (ref["warmup_epochs"], ref["warmup_lr"])
    assert choice(optim.schedule_unit) == ref["schedule_unit"]
    assert choice(loader.augment) == ref["augment"]


@pytest.mark.parametrize("experiment", sorted(PRESETS))
def test_preset_sweep_is_the_published_job_list(experiment: str, hydra_ready: None) -> None:
    preset = PRESETS[experiment]
    jobs = sweep_jobs(experiment)
    assert len(jobs) == preset["jobs"]
    seen = {(j["method"], j.get("dataset"), j.get("shots"), j["seed"]) for j in jobs}
    assert len(seen) == len(jobs), "a job is listed twice"
    datasets = {j.get("dataset", "imagenet") for j in jobs}  # cross-dataset / DG: the preset fixes ImageNet
    assert sorted(datasets) == sorted(preset["datasets"])
    assert {j["method"] for j in jobs} == set(preset["methods"])
    assert sorted({int(j["seed"]) for j in jobs}) == preset["seeds"]
    assert sorted({int(j.get("shots", 16)) for j in jobs}) == preset["shots"]


def test_zero_shot_is_counted_once_per_seed_in_base2novel(hydra_ready: None) -> None:
    """99 = 11 datasets x 3 seeds x 3 methods: zero-shot CLIP runs for every seed too (identical results; its
    test features are computed once and shared through the feature cache)."""
    jobs = sweep_jobs("base2novel_paper")
    per_method = {m: sum(j["method"] == m for j in jobs) for m in ("zeroshot", "coop", "cocoop")}
    assert per_method == {"zeroshot": 33, "coop": 33, "cocoop": 33}


@pytest.mark.parametrize("experiment", sorted(PRESETS))
def test_preset_settings_match_the_reference(experiment: str, hydra_ready: None) -> None:
    """Every method of the preset on ImageNet and on one other dataset of its sweep (every shot count)."""
    preset = PRESETS[experiment]
    jobs = sweep_jobs(experiment)
    others = [d for d in preset["datasets"] if d != "imagenet"]
    picked = {"imagenet", *others[:1]}
    checked = 0
    for method in preset["methods"]:
        for dataset in picked:
            base = next(j for j in jobs if j["method"] == method and j.get("dataset", "imagenet") == dataset)
            cfg = job_config(experiment, {**base, "seed": "1"})
            for shots in preset["shots"]:
                cfg.shots = shots
                check_job(cfg, preset)
                checked += 1
    assert checked == len(preset["methods"]) * len(picked) * len(preset["shots"])


def test_coop_outside_the_presets_keeps_its_own_defaults(hydra_ready: None) -> None:
    """The paper settings are attached to the presets only (conf/method_experiment/<method>_<experiment>.yaml)."""
    plain = hydra_compose("train", ["method=coop", "dataset=dtd"])
    assert (plain.method.learner.n_ctx, plain.method.learner.ctx_init) == (16, None)
    paper = hydra_compose("train", ["experiment=base2novel_paper", "method=coop", "dataset=dtd"])
    assert (paper.method.learner.n_ctx, paper.method.learner.ctx_init) == (4, "a photo of a")


def test_real_datasets_default_to_the_reference_augmentation_and_the_toy_world_to_none(hydra_ready: None) -> None:
    # The dataset files: only the toy world sets an augmentation (none; its variants inherit it), every real
    # dataset takes the schema's default, the reference's crop + flip.
    setting = {p.stem: OmegaConf.load(p).get("augment") for p in (CONF / "dataset").glob("*.yaml")}
    assert {name: value for name, value in setting.items() if value is not None} == {"toyworld": "none"}
    # Composed: the methods that train by gradient follow the dataset; the feature-fitting baselines keep none,
    # as their references (lpclip/ encodes with the test transform; Tip-Adapter caches features).
    for method, expected in (("coop", "coop"), ("cocoop", "coop"), ("linear_probe", "none"), ("tip_adapter_f", "none")):
        cfg = hydra_compose("train", [f"method={method}", "dataset=dtd"])
        assert choice(cfg.method.loader.augment) == expected, method
    for dataset, expected in (("imagenet", "coop"), ("toyworld", "none"), ("toyworld_shift", "none")):
        cfg = hydra_compose("train", ["method=coop", f"dataset={dataset}"])
        assert choice(cfg.method.loader.augment) == expected, dataset
    # The command line still wins.
    cfg = hydra_compose("train", ["method=coop", "dataset=dtd", "method.loader.augment=flip"])
    assert choice(cfg.method.loader.augment) == "flip"


def test_every_method_experiment_file_belongs_to_a_preset_method() -> None:
    """conf/method_experiment/<method>_<experiment>.yaml: the experiment exists and sweeps the method (the
    settings test above composes each of them)."""
    experiments = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    files = sorted((CONF / "method_experiment").glob("*.yaml"))
    assert files
    for path in files:
        experiment = max((e for e in experiments if path.stem.endswith("_" + e)), key=len)
        method = path.stem.removesuffix("_" + experiment)
        assert method in PRESETS[experiment]["methods"], f"{path.name}: a method the preset does not sweep"


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(PRESETS))
def test_every_job_of_the_preset_matches_the_reference(experiment: str) -> None:
    """Every distinct job configuration (method x dataset; seeds and shots change nothing else), validated as
    promptlab-train validates it."""
    preset = PRESETS[experiment]
    with _hydra():
        jobs = sweep_jobs(experiment)
        distinct = {(j["method"], j.get("dataset")): j for j in jobs}
        for job in distinct.values():
            cfg = job_config(experiment, job)
            validate(cfg)
            for shots in preset["shots"]:
                cfg.shots = shots
                check_job(cfg, preset)


@pytest.mark.slow
def test_base2novel_preset_runs_end_to_end_on_a_coop_layout_tree(tmp_path: Path) -> None:
    """`promptlab-train -m experiment=base2novel_paper`, narrowed to one dataset, one seed and 2 shots on the command
    line, on a fixture tree in the CoOp layout with an OpenAI-format checkpoint (a random tiny CLIP): every method
    runs with the preset's settings (the reference's epochs, context and augmentation) and the sweep ends with its
    table."""
    import json

    from tests.dataset_fixtures import build_fixture
    from tests.runs import random_checkpoint, run_cli, workspace_overrides

    expected = build_fixture("oxford_pets", tmp_path / "data", counts={"train": 3, "val": 2, "test": 3})
    # The backbone is swapped for a tiny one (model=toyclip reads any OpenAI-format file, its architecture
    # inferred from the tensors); everything else is the preset's.
    args = ["-m", "experiment=base2novel_paper", "dataset=oxford_pets", "seed=1", "trainer=cpu", "shots=2",
            "model=toyclip", *workspace_overrides(tmp_path),
            f"model.weights_file={random_checkpoint(tmp_path / 'clip.pt')}",
            f"dataset.num_classes={len(expected.classnames)}"]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "outputs" / "sweeps" / "base2novel_paper"
    records = {r["summary"]["method"]: r for r in (json.loads(p.read_text()) for p in sweep.glob("*/metrics.json"))}
    assert set(records) == {"zeroshot", "coop", "cocoop"}
    assert all(r["status"] == "complete" for r in records.values())
    coop, cocoop = records["coop"]["config"]["method"], records["cocoop"]["config"]["method"]
    assert (coop["learner"]["n_ctx"], coop["learner"]["ctx_init"]) == (4, "a photo of a")
    assert (records["coop"]["summary"]["epochs"], records["cocoop"]["summary"]["epochs"]) == (100, 10)  # 2 shots
    assert coop["loader"]["augment"] == cocoop["loader"]["augment"] == "coop"
    assert cocoop["loader"]["batch_size"] == 1
    assert (sweep / "table_base2novel.md").is_file()
