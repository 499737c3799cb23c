"""Loader workers and pinned memory from the machine (loader.num_workers / pin_memory = null, the defaults)."""

from __future__ import annotations

import pytest
import torch

from promptlab.config.method import Augment, AugmentBackend, MethodLoaderConf
from promptlab.config.schema import LoaderConf
from promptlab.data.types import EvalSet
from promptlab.engine import workers as machine
from promptlab.engine.datamodule import PromptDataModule
from tests.data.test_decoded_cache import write_items


def test_the_automatic_rule(monkeypatch):
    monkeypatch.setattr(machine, "usable_cpus", lambda: 16)
    big = machine.MIN_IMAGES_FOR_WORKERS
    assert machine.decode_workers(None, big) == machine.MAX_WORKERS == 8  # 16 - 1, capped
    assert machine.decode_workers(None, big, ranks_per_node=4) == 3  # 16 CPUs shared by 4 ranks, less the main one
    assert machine.decode_workers(None, big - 1) == 0  # a small set decodes in-process
    assert machine.decode_workers(2, 10) == 2 and machine.decode_workers(0, 10**6) == 0  # as configured
    monkeypatch.setattr(machine, "usable_cpus", lambda: 1)
    assert machine.decode_workers(None, 10**6) == 0
    # Randomly augmented loaders: only what the config asks for, whatever the machine.
    assert machine.random_stream_workers(None) == 0 and machine.random_stream_workers(3) == 3
    assert machine.pin_memory(None, torch.device("cuda")) and not machine.pin_memory(None, torch.device("cpu"))
    assert not machine.pin_memory(False, torch.device("cuda")) and machine.pin_memory(True, torch.device("cpu"))


def test_the_data_module_decodes_with_workers_and_records_them(random_clip, tmp_path, monkeypatch):
    """Under the rule, evaluation images are decoded by a worker process (same features as in-process decoding),
    randomly augmented training stays in-process, and `workers_used` says what each loader got."""
    monkeypatch.setattr(machine, "usable_cpus", lambda: 2)
    monkeypatch.setattr(machine, "MIN_IMAGES_FOR_WORKERS", 4)
    items = write_items(tmp_path / "img", [(40 + 3 * i, 36 + 2 * i) for i in range(6)], suffix=".png")
    eval_set = EvalSet(name="base", dataset="fixture", subset="base", items=items,
                       classnames=["class 0", "class 1", "class 2"])

    def module(num_workers):
        method_loader = MethodLoaderConf(batch_size=4, eval_batch_size=4, augment=Augment.coop,
                                         augment_backend=AugmentBackend.pil)
        return PromptDataModule(random_clip, items, [eval_set], method_loader, LoaderConf(num_workers=num_workers),
                                test_feature_cache=False, seed=1)

    auto, inline = module(None), module(0)
    feats_auto, labels = auto.eval_features(eval_set)
    feats_inline, _ = inline.eval_features(eval_set)
    assert torch.equal(feats_auto, feats_inline)
    assert auto.workers_used == {"test images (base)": 1} and inline.workers_used == {"test images (base)": 0}
    auto.setup("fit")
    loader = auto.train_dataloader()
    assert loader.num_workers == 0 and auto.workers_used["train"] == 0  # random crops: not from the machine
    assert not loader.pin_memory  # CPU
    assert module(2).random_workers("train") == 2  # asked for explicitly
    # Ranks on one node share its CPUs (train.py sets ranks_per_node before the test features are extracted).
    monkeypatch.setattr(machine, "usable_cpus", lambda: 8)
    auto.ranks_per_node = 2
    assert auto.decode_workers(10, "test images (other)") == 3


def test_config_defaults_and_refusal():
    from promptlab.config.registry import compose

    cfg = compose([])
    assert cfg.loader.num_workers is None and cfg.loader.pin_memory is None
    assert compose(["loader.num_workers=3", "loader.pin_memory=true"]).loader.num_workers == 3
    with pytest.raises(Exception, match="num_workers"):
        compose(["loader.num_workers=-1"])
