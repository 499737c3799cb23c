"""The typed configs: every option of every group composes and instantiates, no key is dead, bad values
fail at compose time with the key named, and records say what ran."""

from __future__ import annotations

import inspect
import re
from dataclasses import MISSING as DC_MISSING
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

import promptlab
from promptlab.config import LAUNCH_KEYS, compose, schema
from promptlab.config.registry import job_dirname, typed
from promptlab.errors import ConfigError
from promptlab.results.records import read_record
from tests.runs import compose_cfg, run_cli, tiny_overrides

CONF = Path(promptlab.__file__).parent / "conf"
SRC = Path(promptlab.__file__).parent
# Groups whose options are selected on their own; method_dataset is picked by ${method}_${dataset},
# method_experiment by ${method}_${experiment} (tests/config/test_presets.py composes those).
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_"))


def _options(group: str) -> list[str]:
    files = {p.stem for p in (CONF / group).glob("*.yaml")}
    if group == "method":  # registered methods without a preset YAML are options too
        files |= set(schema.method_schemas())
    return sorted(files)


PICKED_GROUPS = ("method_dataset", "method_experiment")
GROUP_OPTIONS = [(g, o) for g in GROUPS if g not in PICKED_GROUPS for o in _options(g)]
GROUP_OPTIONS += [("optimizer", name) for name in schema.OPTIMIZER_SCHEMAS]


def test_every_group_folder_is_covered() -> None:
    assert {g for g, _ in GROUP_OPTIONS} >= set(GROUPS) - set(PICKED_GROUPS)
    assert len(GROUP_OPTIONS) > 40


def _compose_option(group: str, option: str) -> DictConfig:
    extra = {"experiment": [], "dataset": [], "protocol": []}.get(group, [])
    if group == "dataset" and option in ("imagefolder",):
        extra = ["dataset.dataset_dir=/some/folder"]
    check = not (group == "dataset" and option.startswith("imagenet_"))  # test-only datasets are targets
    return compose([f"{group}={option}", *extra], check=check)


def _check_logger_option(cfg: DictConfig, option: str, tmp_path, monkeypatch) -> None:
    """The logger option builds its logger (none: no logger), which logs a metric and finishes."""
    from promptlab.engine.build import build_loggers

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    cfg.paths.output_dir = str(tmp_path)
    if option == "wandb":
        cfg.logger.wandb.mode = "offline"
    loggers = build_loggers(cfg, tmp_path / "run")
    assert [type(lg).__name__.lower().removesuffix("logger") for lg in loggers] == (
        [] if option == "none" else [option])
    for lg in loggers:
        lg.log_metrics({"test/acc": 1.0})
        lg.finalize("success")
    if option == "wandb":
        import wandb

        assert "offline-run" in str(loggers[0].experiment.dir)
        wandb.finish()
        wandb.teardown()  # the next test starts from a clean wandb


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_option_composes_and_instantiates(group: str, option: str, random_clip, tmp_path, monkeypatch) -> None:
    cfg = _compose_option(group, option)
    if group == "method":
        from promptlab.engine.build import build_learner
        from promptlab.methods.base import RunContext

        names = ["red circle", "blue square", "green star"]
        for key in ("depth", "text_depth", "vision_depth"):  # deep prompts: the random CLIP has 2 blocks a tower
            if key in cfg.method.learner:
                cfg.method.learner[key] = min(int(cfg.method.learner[key]), 2)
        learner = build_learner(cfg.method, RunContext(clip=random_clip, classnames=names, init_seed=0))
        learner.set_classnames(random_clip, names)
        out = learner(random_clip, torch.randn(2, random_clip.embed_dim) if learner.instance_conditional else None)
        assert out.shape[-1] == random_clip.embed_dim
    elif group == "optimizer":
        factory = instantiate(cfg.method.optim.optimizer, _convert_="all")
        param = torch.nn.Parameter(torch.ones(2))
        optimizer = factory([param], lr=0.1)
        assert type(optimizer).__name__.lower() == option
    elif group == "trainer":
        if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
            pytest.skip("trainer=gpu needs a GPU to instantiate; it composed")
        trainer = instantiate(cfg.trainer, max_epochs=1, logger=False, default_root_dir=str(tmp_path))
        assert trainer.max_epochs == 1
    elif group == "logger":
        _check_logger_option(cfg, option, tmp_path, monkeypatch)
    elif group == "model":
        import open_clip

        if cfg.model.weights_file != "builtin:toyclip":
            assert cfg.model.name in open_clip.list_models()
            assert cfg.model.pretrained in open_clip.list_pretrained_tags_by_model(cfg.model.name)
    elif group == "launcher":
        from hydra import compose as hydra_compose
        from hydra import initialize_config_module

        with initialize_config_module("promptlab.conf", version_base="1.3"):
            full = hydra_compose("train", [f"launcher={option}"], return_hydra_config=True)
        get_class(full.hydra.launcher._target_)
    elif group in ("dataset", "protocol"):
        from promptlab.data.readers import READERS

        nodes = [cfg.dataset, *cfg.protocol.targets.values()]
        assert all(node.reader in READERS for node in nodes)
    assert OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def test_method_dataset_options_compose() -> None:
    for option in _options("method_dataset"):
        # Method names may hold "_" (tip_adapter_f): the longest method name the option starts with.
        method = max((m for m in schema.METHOD_SCHEMAS if option.startswith(m + "_")), key=len)
        dataset = option.removeprefix(method + "_")
        cfg = compose([f"method={method}", f"dataset={dataset}"])
        assert cfg.method.name == method


# --------------------------------------------------------------------------- dead keys
def _schema_classes() -> list[type]:
    return [obj for obj in vars(schema).values() if is_dataclass(obj) and isinstance(obj, type)]


def _code_text() -> str:
    files = [p for p in SRC.rglob("*.py") if p != SRC / "config" / "schema.py"] + list(CONF.rglob("*.yaml"))
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def test_no_dead_keys() -> None:
    """Every schema key is read somewhere: a _target_ node's keys are its class's parameters; any other key
    appears in the code as an attribute or a string."""
    code = _code_text()
    forwarded = {"lightning.pytorch.loggers.WandbLogger": "wandb.init"}  # takes **kwargs and passes them on
    dead = []
    for cls in _schema_classes():
        names = [f.name for f in fields(cls)]
        target = next((f.default for f in fields(cls) if f.name == "_target_"), None)
        if target is not None and target is not DC_MISSING:
            params = inspect.signature(get_class(target)).parameters
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            for name in names:
                if name.startswith("_") or name in params:
                    continue
                # Learners pass extra keyword arguments on to their base class.
                if takes_any and any(name in inspect.signature(base).parameters
                                     for base in get_class(target).__mro__[1:] if hasattr(base, "__init__")):
                    continue
                if target in forwarded:
                    module, func = forwarded[target].rsplit(".", 1)
                    if name in inspect.signature(getattr(__import__(module), func)).parameters:
                        continue
                dead.append(f"{cls.__name__}.{name} (not a parameter of {target})")
            continue
        for name in names:
            if not re.search(r"(\." + name + r"\b|[\"']" + name + r"[\"']|\$\{" + name + r"[}.])", code):
                dead.append(f"{cls.__name__}.{name}")
    assert not dead, f"schema keys no code reads: {dead}"


def test_learner_defaults_are_the_schema_defaults() -> None:
    """A learner built in Python without arguments is the learner the config builds."""
    for cls in (schema.CoOpLearnerConf, schema.CoCoOpLearnerConf, schema.KgCoOpLearnerConf):
        params = inspect.signature(get_class(cls._target_)).parameters
        for f in fields(cls):
            if f.name.startswith("_") or f.name not in params or params[f.name].default is inspect.Parameter.empty:
                continue
            default = f.default.value if hasattr(f.default, "value") else f.default
            if isinstance(default, str) and default.startswith("${"):
                continue  # filled from another node (e.g. prompts.*), not a default of its own
            assert params[f.name].default == default, f"{cls.__name__}.{f.name}"


# --------------------------------------------------------------------------- bad values
BAD = [
    ("method.loader.batch_size=0", "method.loader.batch_size"),
    ("method.loader.eval_batch_size=-1", "method.loader.eval_batch_size"),
    ("shots=-2", "shots"),
    ("shots=0", "shots"),
    ("shots=abc", "shots"),
    ("method=coop method.learner.class_token_position=left", "class_token_position"),
    ("method=coop method.learner.ctx_init=null method.learner.n_ctx=0", "method.learner.n_ctx"),
    ("method=cocoop method.learner.n_ctx=16", "method.learner.n_ctx"),
    ("method.foo=1", "method.foo"),
    ("+method.foo=1", "foo"),
    ("method.optim.lr=-1", "method.optim.lr"),
    ("method.loader.augment=jitter", "augment"),
    ("loader.on_error=ignore", "on_error"),
    ("model.weights_dtype=fp8", "weights_dtype"),
    ("trainer.precision=8-mixed", "trainer.precision"),
    ("protocol.name=zero2hero", "name"),
    ("method=coop method.learner.csc=true", "method.learner.csc"),
    ("dataset=imagenet_a", "test_only"),
    ("method=linear_probe method.learner.c_grid=[1,0]", "method.learner.c_grid"),
    ("method=tip_adapter method.learner.search_scale=[0.05,3]", "method.learner.search_scale"),
    ("method=tip_adapter_f method.optim.warmup_epochs=1", "method.optim.schedule_unit"),
]


@pytest.mark.parametrize(("overrides", "key"), BAD, ids=[b[0] for b in BAD])
def test_bad_values_fail_at_compose_time_naming_the_key(overrides: str, key: str, monkeypatch) -> None:
    import promptlab.models.loading as loading

    def no_loading(*args, **kwargs):  # composing must not reach the model
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_clip", no_loading)
    with pytest.raises((ConfigError, ConfigCompositionException)) as info:
        compose(overrides.split())
    text = str(info.value) + str(getattr(info.value, "__cause__", ""))
    assert key in text, text


def test_the_cli_prints_a_bad_value_as_one_paragraph_before_loading_anything(tmp_path, monkeypatch) -> None:
    from promptlab.models import loading

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_clip", no_loading)
    proc = run_cli(["method.loader.batch_size=0", f"paths.output_dir={tmp_path}"], cwd=tmp_path,
                   env={"HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 1
    assert "promptlab-train: error:" in proc.stderr and "method.loader.batch_size=0" in proc.stderr
    assert "Traceback" not in proc.stderr and "a model was loaded" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("metrics.json"))


# --------------------------------------------------------------------------- launch-only keys
def test_one_list_of_launch_keys_feeds_the_hash_and_the_folder_names() -> None:
    from promptlab.results.records import config_hash

    a = compose_cfg(["paths.output_dir=/a", "loader.num_workers=0", "logger=none"])
    b = compose_cfg(["paths.output_dir=/b", "loader.num_workers=4", "logger=csv", "num_threads=2"])
    plain = [OmegaConf.to_container(c, resolve=True, enum_to_str=True) for c in (a, b)]
    assert config_hash(plain[0], exclude=LAUNCH_KEYS) == config_hash(plain[1], exclude=LAUNCH_KEYS)
    assert job_dirname(["seed=1", "paths.output_dir=/b", "loader.num_workers=4", "logger=csv", "method=coop",
                        "+logger.wandb.tags=[x]"]) == "method=coop,seed=1"
    c = compose_cfg(["seed=2"])
    assert config_hash(OmegaConf.to_container(c, resolve=True, enum_to_str=True), exclude=LAUNCH_KEYS) != \
        config_hash(plain[0], exclude=LAUNCH_KEYS)


# --------------------------------------------------------------------------- truthful records
def test_an_n_ctx_sweep_with_an_init_phrase_records_what_ran(tmp_path) -> None:
    from promptlab.train import run

    base = [*tiny_overrides(tmp_path), "method=coop", "method.optim.epochs=1"]
    with pytest.raises(ConfigError, match="n_ctx=2 but"):
        run(compose_cfg([*base, "method.learner.n_ctx=2", "method.learner.ctx_init=a photo of a", "run_name=c2"]))
    assert not (tmp_path / "outputs" / "runs" / "c2" / "metrics.json").exists()
    for n_ctx, init in ((4, "a photo of a"), (2, "null")):
        name = f"ctx{n_ctx}"
        record = run(compose_cfg([*base, f"method.learner.n_ctx={n_ctx}", f"method.learner.ctx_init={init}",
                                  f"run_name={name}"]))
        saved = torch.load(tmp_path / "outputs" / "runs" / name / "prompt_learner.pt", weights_only=True)
        assert record["summary"]["n_ctx"] == saved["state_dict"]["ctx"].shape[0] == n_ctx


def test_the_record_holds_the_precision_that_ran_and_exact_accuracies(tmp_path) -> None:
    from promptlab.train import run

    record = run(compose_cfg([*tiny_overrides(tmp_path), "trainer.precision=16-mixed", "trainer.accelerator=cpu"]))
    assert record["summary"]["precision"] == "bf16-mixed"  # what Lightning ran on CPU
    for evaluation in record["evaluations"]:
        assert evaluation["acc"] == 100.0 * evaluation["n_correct"] / evaluation["n_images"]
        assert isinstance(evaluation["n_correct"], int)


def test_identical_runs_write_identical_prompt_bytes_and_a_moved_output_folder_resumes(tmp_path) -> None:
    import shutil

    from promptlab.train import run

    def job(root: Path, name: str) -> list[str]:
        return [*tiny_overrides(tmp_path), f"paths.output_dir={root}", f"paths.cache_dir={root / 'cache'}",
                "method=coop", "method.optim.epochs=1", f"run_name={name}"]

    run(compose_cfg(job(tmp_path / "a", "one")))
    run(compose_cfg(job(tmp_path / "a", "two")))
    runs = tmp_path / "a" / "runs"
    first = read_record(runs / "one")
    assert (runs / "one" / "prompt_learner.pt").read_bytes() == (runs / "two" / "prompt_learner.pt").read_bytes()

    shutil.move(tmp_path / "a", tmp_path / "moved")
    again = run(compose_cfg(job(tmp_path / "moved", "one")))
    assert again == first  # the finished record was reused: nothing ran again
    assert read_record(tmp_path / "moved" / "runs" / "one") == first


def test_a_saved_config_is_typed_again() -> None:
    cfg = compose_cfg(["method=coop"])
    again = typed(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    assert again.method.learner.class_token_position == schema.ClassTokenPosition.end
    assert again.dataset.epochs_by_shots[16] == 200
    with pytest.raises(Exception, match="nope"):
        typed({**OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "nope": 1})
