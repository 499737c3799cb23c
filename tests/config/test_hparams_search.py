"""The hparams_search configs (Optuna via Hydra): each composes, selects its method, and every searched parameter is a
valid override at both ends of its range, with the reference's default inside it. No Optuna run here (the slow
suite runs one: tests/engine/test_validation.py)."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from promptlab.config.registry import register_configs
from tests.runs import CONF_DIR, compose_cfg

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="promptlab[tune] is not installed")

SEARCHES = sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("*.yaml"))


def compose_search(name: str):
    """The train config with its hydra node, as `promptlab-train -m hparams_search=<name>` composes it."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="promptlab.conf", version_base="1.3"):
        return compose(config_name="train", overrides=[f"hparams_search={name}"], return_hydra_config=True)


def bounds(spec: str) -> list[str]:
    """The values at the ends of an Optuna range (`tag(log, interval(a, b))`) or every `choice(...)` value."""
    found = re.search(r"interval\(([^,]+),([^)]+)\)", spec) or re.search(r"choice\(([^)]*)\)", spec)
    assert found, spec
    return [v.strip() for v in (found.groups() if "interval" in spec else found.group(1).split(","))]


def test_every_search_is_listed():
    assert {"coop", "kgcoop", "promptsrc"} <= set(SEARCHES)


@pytest.mark.parametrize("name", SEARCHES)
def test_search_composes_and_its_parameters_are_valid_overrides(name):
    cfg = compose_search(name)
    assert cfg.method.name == name  # `override /method: <name>` selects the method it tunes
    assert cfg.hydra.sweeper.direction == "maximize"
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert params
    job = compose_cfg([f"method={name}", "dataset=dtd"])  # the reference defaults (the toy world has its own lr)
    ends = {key: bounds(str(spec)) for key, spec in params.items()}
    for key, spec in params.items():
        if "interval" in str(spec):  # the reference's default lies inside the searched range
            low, high = (float(v) for v in ends[key])
            assert low <= float(OmegaConf.select(job, key)) <= high, (key, spec)
    for pick in (0, -1):  # every parameter at its lower ends, then at its upper ends: one composition each
        composed = compose_cfg([f"method={name}", *(f"{key}={values[pick]}" for key, values in ends.items())])
        for key, values in ends.items():  # compose raises on an unknown key or a bad value
            assert float(OmegaConf.select(composed, key)) == float(values[pick])

def test_promptsrc_search_tunes_the_lr_and_the_three_loss_weights():
    params = OmegaConf.to_container(compose_search("promptsrc").hydra.sweeper.params)
    assert set(params) == {"method.optim.lr", "method.learner.text_loss_weight", "method.learner.image_loss_weight",
                           "method.learner.logit_loss_weight"}
