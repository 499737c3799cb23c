"""The LightningDataModule: few-shot training data and the evaluation sets of a protocol.

Training batches carry images, or precomputed frozen features when that is exact (see features.py).
Evaluation batches carry test features from the on-disk cache. Learners fitted on features (linear probe,
Tip-Adapter) get the few-shot train and val features from `fit_features`, which never touches test data.
Under DDP every evaluation image is seen exactly once: each rank reads a disjoint shard (no
DistributedSampler padding, whose duplicated images would change the accuracy), and torchmetrics sums
the counts across ranks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from promptlab.data.image_dataset import ImageDataset
from promptlab.data.transforms import build_transform
from promptlab.data.types import Datum, EvalSet
from promptlab.engine.features import cache_key, cached_features, encode_images
from promptlab.errors import ConfigError
from promptlab.methods.base import FitFeatures
from promptlab.models.frozen import FrozenCLIP

log = logging.getLogger(__name__)


class FeatureDataset(Dataset):
    """Precomputed features [N, D] (or [K, N, D]: K fixed augmented views, one drawn per access)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> dict:
        feats = self.features
        if feats.dim() == 3:
            feats = feats[int(torch.randint(feats.shape[0], ()))]
        return {"feature": feats[index], "label": int(self.labels[index]), "index": index}


class ShardSampler(Sampler[int]):
    """Rank r of w gets indices r, r+w, r+2w, ...: disjoint shards that cover the set exactly once."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class PromptDataModule(L.LightningDataModule):
    def __init__(
        self,
        clip: FrozenCLIP,
        train_items: list[Datum],
        eval_sets: list[EvalSet],
        batch_size: int = 32,
        eval_batch_size: int = 100,
        num_workers: int = 0,
        pin_memory: bool = False,
        augment: str = "none",
        train_cache: str = "auto",
        train_views: int = 0,
        eval_cache: bool = True,
        cache_dir: Path | None = None,
        on_error: str = "raise",
        precision: str = "32",
        seed: int = 0,
        image_mean: tuple[float, ...] | None = None,
        image_std: tuple[float, ...] | None = None,
        val_items: list[Datum] | None = None,
        normalize_features: bool = True,
    ) -> None:
        """`val_items`: the few-shot validation split (for learners that choose hyper-parameters on it);
        `normalize_features=False`: every cached feature un-normalised (a learner that asks for it)."""
        super().__init__()
        if train_cache not in ("auto", "on", "off"):
            raise ConfigError(f"train_cache={train_cache!r}; expected auto, on or off.")
        if train_cache == "on" and augment != "none" and train_views < 1:
            raise ConfigError(
                f"train_cache=on with augment={augment!r} would freeze one random crop per image for the whole "
                "run. Set augment=none, or train_views=K to cache K augmented views per image (documented "
                "approximation), or train_cache=auto/off to encode augmented images every step (reference)."
            )
        self.clip = clip
        self.train_items = train_items
        self.val_items = list(val_items or [])
        self.eval_sets = eval_sets
        self.normalize_features = normalize_features
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.augment, self.train_cache, self.train_views = augment, train_cache, train_views
        self.eval_cache, self.cache_dir, self.on_error = eval_cache, cache_dir, on_error
        self.precision, self.seed = precision, seed
        size = clip.image_size
        # The loaded model's own preprocessing (open_clip's preprocess config: OpenAI's mean/std for OpenAI
        # CLIP, 0.5/0.5 and squash resizing for SigLIP); image_mean/image_std override it when given.
        pre = clip.preprocess_cfg
        spec = {"mean": tuple(image_mean or pre["mean"]), "std": tuple(image_std or pre["std"]),
                "interpolation": pre["interpolation"], "resize_mode": pre["resize_mode"]}
        self.train_transform = build_transform(size, train=True, augment=augment, **spec)
        self.test_transform = build_transform(size, train=False, **spec)
        self.active_eval: EvalSet | None = None
        self._train_dataset: Dataset | None = None
        self._eval_features: dict[str, torch.Tensor] = {}
        self.train_skipped: list[dict] = []

    # ----------------------------------------------------------------- helpers
    @property
    def uses_train_features(self) -> bool:
        if self.train_cache == "off":
            return False
        if self.augment == "none":
            return True  # deterministic transform: the features are exactly what each step would compute
        return self.train_cache == "on" and self.train_views > 0

    def _device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return next(self.clip.parameters()).device

    def _encode(self, dataset: ImageDataset, label: str) -> torch.Tensor:
        return encode_images(self.clip, dataset, batch_size=self.eval_batch_size, num_workers=self.num_workers,
                             device=self._device(), precision=self.precision, desc=label,
                             normalize=self.normalize_features)

    def _key(self, items: list[Datum], transform: object) -> str:
        # Un-normalised features are other numbers: they must never share a cache entry with normalised ones.
        return cache_key(self.clip, items, transform, self.precision, extra="" if self.normalize_features else "raw")

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    # ----------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        if stage == "fit" and self._train_dataset is None:
            self._train_dataset = self._build_train_dataset()

    def _build_train_dataset(self) -> Dataset:
        if not self.train_items:
            raise ValueError("No training images: the few-shot split is empty.")
        if not self.uses_train_features:
            dataset = ImageDataset(self.train_items, self.train_transform, on_error=self.on_error)
            self.train_skipped = dataset.skipped
            return dataset
        dataset = ImageDataset(self.train_items, self.train_transform, on_error=self.on_error)
        self.train_skipped = dataset.skipped
        labels = torch.tensor([item.label for item in dataset.items])
        if self.augment == "none":
            key = self._key(dataset.items, self.train_transform)
            feats = cached_features(self.cache_dir, key, lambda: self._encode(dataset, "train images"),
                                    "few-shot train")
            return FeatureDataset(feats, labels)
        # K fixed augmented views, drawn with the run's seed (a documented approximation of online augmentation).
        views = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for k in range(self.train_views):
                views.append(self._encode(dataset, f"train view {k + 1}/{self.train_views}"))
        return FeatureDataset(torch.stack(views), labels)

    def fit_features(self) -> FitFeatures:
        """Frozen features of the few-shot train and val splits (a closed-form fit's whole input).

        Train: the cached training features when training uses them (one view, or K augmented views), else the
        images once through the test transform (deterministic, as the linear-probe reference). Val: the test
        transform. Neither reads the test split.
        """
        self.setup("fit")
        dataset = self._train_dataset
        if isinstance(dataset, FeatureDataset):
            train, train_labels = dataset.features, dataset.labels
        else:
            train, train_labels = self._split_features(self.train_items, "few-shot train (test transform)")
        val, val_labels = self._split_features(self.val_items, "few-shot val")
        return FitFeatures(train=train, train_labels=train_labels, val=val, val_labels=val_labels)

    def _split_features(self, items: list[Datum], label: str) -> tuple[torch.Tensor, torch.Tensor]:
        if not items:
            return torch.empty(0, self.clip.embed_dim), torch.empty(0, dtype=torch.long)
        dataset = ImageDataset(items, self.test_transform, on_error=self.on_error)
        labels = torch.tensor([item.label for item in dataset.items])
        key = self._key(dataset.items, self.test_transform)
        return cached_features(self.cache_dir, key, lambda: self._encode(dataset, label), label), labels

    def train_dataloader(self) -> DataLoader:
        assert self._train_dataset is not None, "setup('fit') must run first"
        rank, world = self._rank_world()
        generator = torch.Generator().manual_seed(self.seed)
        sampler = None
        if world > 1:
            sampler = DistributedSampler(self._train_dataset, num_replicas=world, rank=rank, shuffle=True,
                                         seed=self.seed, drop_last=False)
        # drop_last=False: every few-shot image is used every epoch. The reference drops the last incomplete
        # batch once a set holds a full batch, and an unconditional drop_last would leave a set smaller than
        # a batch with no steps at all (docs/reference.md, "Pitfalls").
        features = isinstance(self._train_dataset, FeatureDataset)
        return DataLoader(self._train_dataset, batch_size=self.batch_size, shuffle=sampler is None,
                          sampler=sampler, generator=generator, drop_last=False,
                          num_workers=0 if features else self.num_workers,
                          pin_memory=self.pin_memory and not features,
                          persistent_workers=(not features) and self.num_workers > 0)

    # ----------------------------------------------------------------- evaluation
    def eval_features(self, eval_set: EvalSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Test features and labels of an evaluation set (cached on disk across the jobs of a sweep)."""
        dataset = ImageDataset(eval_set.items, self.test_transform, on_error=self.on_error)
        eval_set.skipped = dataset.skipped
        labels = torch.tensor([item.label for item in dataset.items])
        key = self._key(dataset.items, self.test_transform)
        if key not in self._eval_features:
            cache_dir = self.cache_dir if self.eval_cache else None
            self._eval_features[key] = cached_features(
                cache_dir, key, lambda: self._encode(dataset, f"test images ({eval_set.name})"),
                f"{eval_set.dataset}/{eval_set.subset}")
        return self._eval_features[key], labels

    def test_dataloader(self) -> DataLoader:
        if self.active_eval is None:
            raise RuntimeError("set datamodule.active_eval before trainer.test")
        feats, labels = self.eval_features(self.active_eval)
        dataset = FeatureDataset(feats, labels)
        rank, world = self._rank_world()
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=ShardSampler(len(dataset), rank, world),
                          num_workers=0)
