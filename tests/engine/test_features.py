"""Frozen-feature caches and loaders: exactness rules, disk cache sharing, no dropped last batch."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from promptlab.config.method import Augment, MethodLoaderConf, TrainCache
from promptlab.data.types import Datum
from promptlab.engine.datamodule import PromptDataModule
from promptlab.engine.features import cache_key, cached_features
from tests.dataset_fixtures import write_image


def _items(tmp_path, n=5):
    items = []
    for i in range(n):
        path = tmp_path / f"img_{i}.png"
        write_image(path)
        items.append(Datum(str(path), i % 2, "a" if i % 2 == 0 else "b"))
    return items


def test_disk_cache_computes_once_and_is_shared(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).view(3, 2)

    first = cached_features(tmp_path, "k1", compute, "test")
    second = cached_features(tmp_path, "k1", compute, "test")
    assert len(calls) == 1 and torch.equal(first, second)
    assert not list(tmp_path.rglob("*.tmp"))  # written atomically, no temp file left
    (tmp_path / "features" / "k1.pt").write_bytes(b"garbage")  # a corrupt cache file is recomputed
    assert torch.equal(cached_features(tmp_path, "k1", compute, "test"), first) and len(calls) == 2


def test_cache_key_depends_on_everything_a_feature_depends_on(random_clip, tmp_path):
    items = _items(tmp_path)
    dm = PromptDataModule(random_clip, items, [])
    base = cache_key(random_clip, items, dm.test_transform, "32")
    assert base == cache_key(random_clip, list(items), dm.test_transform, "32")
    assert base != cache_key(random_clip, items[:-1], dm.test_transform, "32")
    assert base != cache_key(random_clip, items, "another transform", "32")
    assert base != cache_key(random_clip, items, dm.test_transform, "bf16-mixed")


def test_train_features_only_when_exact(random_clip, tmp_path):
    items = _items(tmp_path)
    exact = PromptDataModule(random_clip, items, [], MethodLoaderConf(batch_size=4, augment=Augment.none),
                             cache_dir=tmp_path)
    exact.setup("fit")
    assert exact.uses_train_features
    batches = list(exact.train_dataloader())
    assert [b["label"].shape[0] for b in batches] == [4, 1]  # the last partial batch is kept
    encoded = random_clip.encode_image(torch.stack([exact.test_transform(Image.open(d.impath).convert("RGB"))
                                                    for d in items]))
    torch.testing.assert_close(exact._train_dataset.features, encoded, atol=1e-5, rtol=1e-5)

    online = PromptDataModule(random_clip, items, [], MethodLoaderConf(augment=Augment.coop))
    assert not online.uses_train_features  # random crops: encode every step, as the reference
    views = PromptDataModule(random_clip, items, [],
                             MethodLoaderConf(augment=Augment.coop, train_cache=TrainCache.on, train_views=3))
    views.setup("fit")
    assert views._train_dataset.features.shape[:2] == (3, 5)


def test_the_loader_choices_the_data_module_trusts_are_refused_when_composed():
    """The data module takes method.loader as composed and checks none of its choices again: a value outside a
    closed choice fails when Hydra composes, a combination that cannot work when the config is validated."""
    from hydra.errors import ConfigCompositionException

    from promptlab.config.registry import compose
    from promptlab.errors import ConfigError

    for bad in ("method.loader.augment_backend=gpu", "method.loader.train_cache=sometimes"):
        with pytest.raises(ConfigCompositionException) as info:
            compose(["method=coop", bad], check=False)
        assert "expected one of" in str(info.value.__cause__) and bad.split("=")[0] in str(info.value.__cause__)
    with pytest.raises(ConfigError, match="train_views=K"):
        compose(["method=coop", "method.loader.augment=coop", "method.loader.train_cache=on"])
    compose(["method=coop", "method.loader.augment=coop", "method.loader.train_cache=on",
             "method.loader.train_views=2"])  # K cached views: fine


def test_the_data_module_reads_the_composed_loader_nodes(random_clip, tmp_path):
    from promptlab.config.registry import compose

    cfg = compose(["method=coop", "method.loader.batch_size=3", "method.loader.augment=flip",
                   "method.loader.augment_backend=pil", "loader.on_error=skip", "loader.num_workers=0"])
    dm = PromptDataModule(random_clip, _items(tmp_path), [], cfg.method.loader, cfg.loader, seed=5)
    assert (dm.batch_size, dm.eval_batch_size) == (3, cfg.method.loader.eval_batch_size)
    # The schema's enums arrive as their plain values (the transforms and loaders compare strings).
    assert (dm.augment, dm.augment_backend, dm.train_cache, dm.on_error) == ("flip", "pil", "auto", "skip")
    assert dm.num_workers == 0 and dm.pin_memory is None and dm.seed == 5
    dm.setup("fit")
    assert [b["image"].shape[0] for b in dm.train_dataloader()] == [3, 2]  # PIL pipeline, batches of 3
