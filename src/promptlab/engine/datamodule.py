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
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from promptlab.config.method import Augment, MethodLoaderConf
from promptlab.config.registry import choice
from promptlab.config.schema import LoaderConf
from promptlab.data.decoded_cache import DecodedImages, build_decoded_images, collate_decoded
from promptlab.data.image_dataset import ImageDataset, require_decodable
from promptlab.data.tensor_augment import TensorAugment
from promptlab.data.transforms import build_transform
from promptlab.data.types import Datum, EvalSet
from promptlab.engine import workers as machine
from promptlab.engine.features import cache_key, cached_features, encode_images
from promptlab.errors import ConfigError
from promptlab.methods.base import FitFeatures, PromptLearner
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


#: Feature rows per evaluation batch for learners with static text (a [rows, D] x [D, C] product per batch).
STATIC_TEXT_FEATURE_BATCH = 4096


def feature_batch_size(learner: PromptLearner, eval_batch_size: int) -> int:
    """Rows per batch when evaluation scores cached features: thousands for learners with one text embedding per
    class (on the toy CLIP, Lightning's per-batch hooks cost more than a batch of 100 rows' product), the image
    batch otherwise (CoCoOp's per-image prompts cost text-encoder passes per row)."""
    return max(eval_batch_size, STATIC_TEXT_FEATURE_BATCH) if learner.static_text else eval_batch_size


class PromptDataModule(L.LightningDataModule):
    def __init__(
        self,
        clip: FrozenCLIP,
        train_items: list[Datum],
        eval_sets: list[EvalSet],
        method_loader: MethodLoaderConf | DictConfig | None = None,
        loader: LoaderConf | DictConfig | None = None,
        *,
        val_items: list[Datum] | None = None,
        seed: int = 0,
        precision: str = "32",
        cache_dir: Path | None = None,
        test_feature_cache: bool = True,
        encodes_images: bool = False,
        normalize_features: bool = True,
        feature_eval_batch_size: int | None = None,
    ) -> None:
        """The data of one run, from its config nodes: `method_loader` is the method's `method.loader` (batch
        sizes, augmentation and its backend, training-feature caching; None: the schema's defaults without
        augmentation), `loader` the machine's `loader` (workers, pinned memory, on_error; None: the schema's).
        Their values are the schema's closed choices, checked when the config is composed and validated
        (promptlab.config.validate), so they are not checked again here.

        `val_items`: the few-shot validation split (for learners that choose hyper-parameters on it);
        `seed`: the training order and augmentation; `precision`: what features are encoded under (the trainer
        sets the one it runs); `cache_dir`: paths.cache_dir (frozen features, decode verdicts, decoded images);
        `test_feature_cache`: keep test-image features there for the sweep's other jobs;
        `encodes_images`: the learner encodes images itself (image-tower prompts): training and test
        batches carry images, never frozen features, and each test image is read and encoded once per evaluation;
        `normalize_features=False`: every cached feature un-normalised (a learner that asks for it);
        `feature_eval_batch_size`: rows per batch when evaluation scores cached features (None: the eval batch).
        Learners with one text embedding per class score thousands of features in one matrix product, and each
        batch of Lightning's test loop costs more than that product (feature_batch_size).
        `workers_used` records the worker processes each loader got (engine/workers.py)."""
        super().__init__()
        method_loader = method_loader if method_loader is not None else MethodLoaderConf(augment=Augment.none)
        loader = loader if loader is not None else LoaderConf()
        self.encodes_images = encodes_images
        self.train_cache = choice(method_loader.train_cache)
        if encodes_images and self.train_cache == "on":
            # Depends on the built learner (IVLP encodes images only with vision tokens), so it is checked here.
            raise ConfigError(
                "method.loader.train_cache=on: this method learns tokens inside the image tower, so image features "
                "change with every step and cannot be cached. Use train_cache=auto or off."
            )
        self.augment, self.train_views = choice(method_loader.augment), int(method_loader.train_views)
        self.augment_backend = choice(method_loader.augment_backend)
        self.decoded_cache_disk = bool(method_loader.decoded_cache_disk)
        self.tensor_augment: TensorAugment | None = None
        self.clip = clip
        self.train_items = train_items
        self.val_items = list(val_items or [])
        self.eval_sets = eval_sets
        self.normalize_features = normalize_features
        self.batch_size, self.eval_batch_size = int(method_loader.batch_size), int(method_loader.eval_batch_size)
        self.feature_eval_batch_size = feature_eval_batch_size or self.eval_batch_size
        self.num_workers, self.pin_memory = loader.num_workers, loader.pin_memory
        self.on_error = choice(loader.on_error)
        self.workers_used: dict[str, int] = {}  # loader -> worker processes it ran with (for the run record)
        self.ranks_per_node = 1  # ranks sharing this node's CPUs: train.py sets the trainer's devices per node
        self.test_feature_cache, self.cache_dir = test_feature_cache, cache_dir
        self.precision, self.seed = precision, seed
        size = clip.image_size
        # The loaded model's own preprocessing (open_clip's preprocess config: OpenAI's mean/std for OpenAI
        # CLIP, 0.5/0.5 and squash resizing for SigLIP).
        pre = clip.preprocess_cfg
        spec = {"mean": tuple(pre["mean"]), "std": tuple(pre["std"]),
                "interpolation": pre["interpolation"], "resize_mode": pre["resize_mode"]}
        self.train_transform = build_transform(size, train=True, augment=self.augment, **spec)
        self.test_transform = build_transform(size, train=False, **spec)
        self.active_eval: EvalSet | None = None
        self._train_dataset: FeatureDataset | DecodedImages | ImageDataset | None = None
        # The training order's generator, kept so an in-run checkpoint can save and restore it (state_dict).
        self._train_generator: torch.Generator | None = None
        self._restored_generator_state: torch.Tensor | None = None
        self._eval_features: dict[str, torch.Tensor] = {}
        self.train_skipped: list[dict] = []

    # ----------------------------------------------------------------- helpers
    @property
    def uses_train_features(self) -> bool:
        if self.encodes_images:
            return False
        if self.train_cache == "off":
            return False
        if self.augment == "none":
            return True  # deterministic transform: the features are exactly what each step would compute
        return self.train_cache == "on" and self.train_views > 0

    def _device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return next(self.clip.parameters()).device

    def _encode(self, dataset: ImageDataset, label: str, random_transform: bool = False) -> torch.Tensor:
        workers = self.random_workers(label) if random_transform else self.decode_workers(len(dataset), label)
        return encode_images(self.clip, dataset, batch_size=self.eval_batch_size, num_workers=workers,
                             device=self._device(), precision=self.precision, desc=label,
                             normalize=self.normalize_features)

    def decode_workers(self, n_images: int, loader: str) -> int:
        """Workers of a loader without random transforms (engine/workers.py), recorded under `loader`."""
        self.workers_used[loader] = machine.decode_workers(self.num_workers, n_images, self.ranks_per_node)
        return self.workers_used[loader]

    def random_workers(self, loader: str) -> int:
        """Workers of a randomly augmented loader: only as configured (engine/workers.py), recorded."""
        self.workers_used[loader] = machine.random_stream_workers(self.num_workers)
        return self.workers_used[loader]

    @property
    def pins_memory(self) -> bool:
        return machine.pin_memory(self.pin_memory, self._device())

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

    def _build_train_dataset(self) -> FeatureDataset | DecodedImages | ImageDataset:
        if not self.train_items:
            raise ValueError("No training images: the few-shot split is empty.")
        if not self.uses_train_features and self.augment_backend == "tensor" and self.augment != "none":
            return self._build_decoded_dataset()
        if not self.uses_train_features:
            dataset = ImageDataset(self.train_items, self.train_transform, on_error=self.on_error,
                                   check_cache_dir=self.cache_dir)
            self.train_skipped = dataset.skipped
            return dataset
        dataset = ImageDataset(self.train_items, self.train_transform, on_error=self.on_error,
                               check_cache_dir=self.cache_dir)
        self.train_skipped = dataset.skipped
        labels = torch.tensor([item.label for item in dataset.items])
        if self.augment == "none":
            key = self._key(dataset.items, self.train_transform)
            feats = cached_features(self.cache_dir, key, lambda: self._encode(dataset, "train images"),
                                    "few-shot train", rows=len(dataset.items))
            return FeatureDataset(feats, labels)
        # K fixed augmented views, drawn with the run's seed (a documented approximation of online augmentation).
        views = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for k in range(self.train_views):
                views.append(self._encode(dataset, f"train view {k + 1}/{self.train_views}", random_transform=True))
        return FeatureDataset(torch.stack(views), labels)

    def _build_decoded_dataset(self) -> DecodedImages:
        """Training images decoded once (data/decoded_cache.py); crop/flip/normalise run per batch on the
        device (on_after_batch_transfer), with a generator seeded by the run's seed and the rank."""
        pre = self.clip.preprocess_cfg
        decoding = self.decode_workers(len(self.train_items), "decode once")
        dataset, self.train_skipped = build_decoded_images(
            self.train_items, self.clip.image_size, augment=self.augment, interpolation=pre["interpolation"],
            on_error=self.on_error, cache_dir=self.cache_dir if self.decoded_cache_disk else None,
            test_transform=self.test_transform, num_workers=decoding,
            multiprocessing_context=machine.worker_context(decoding))
        rank, _ = self._rank_world()
        norm = self.train_transform.transforms[-1]  # the PIL pipeline's Normalize: the same mean and std
        self.tensor_augment = TensorAugment(
            self.clip.image_size, mode=self.augment, mean=norm.mean, std=norm.std, interpolation=pre["interpolation"],
            generator=torch.Generator().manual_seed(self.seed * 1009 + rank))
        return dataset

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Decoded training images arrive as a list of uint8 tensors on the device: augment them as a batch.
        if isinstance(batch, dict) and "image_u8" in batch and self.tensor_augment is not None:
            batch = {k: v for k, v in batch.items() if k != "image_u8"} | {
                "image": self.tensor_augment(batch["image_u8"])}
        return batch

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
        dataset = ImageDataset(items, self.test_transform, on_error=self.on_error,
                               check_cache_dir=self.cache_dir)
        labels = torch.tensor([item.label for item in dataset.items])
        key = self._key(dataset.items, self.test_transform)
        with torch.random.fork_rng(devices=[]):  # deterministic transform: cached or not, the same random stream
            return cached_features(self.cache_dir, key, lambda: self._encode(dataset, label), label,
                                   rows=len(dataset.items)), labels

    def train_dataloader(self) -> DataLoader:
        assert self._train_dataset is not None, "setup('fit') must run first"
        rank, world = self._rank_world()
        generator = torch.Generator().manual_seed(self.seed)
        if self._restored_generator_state is not None:  # resuming: continue the order where the checkpoint was
            generator.set_state(self._restored_generator_state)
            self._restored_generator_state = None
        self._train_generator = generator
        sampler: DistributedSampler | None = None
        if world > 1:
            sampler = DistributedSampler(self._train_dataset, num_replicas=world, rank=rank, shuffle=True,
                                         seed=self.seed, drop_last=False)
        # drop_last=False: every few-shot image is used every epoch. The reference drops the last incomplete
        # batch once a set holds a full batch, and an unconditional drop_last would leave a set smaller than
        # a batch with no steps at all (docs/reference.md, "Pitfalls").
        features = isinstance(self._train_dataset, FeatureDataset)
        if isinstance(self._train_dataset, DecodedImages):  # in memory already: no workers, list batches
            return DataLoader(self._train_dataset, batch_size=self.batch_size, shuffle=sampler is None,
                              sampler=sampler, generator=generator, drop_last=False, collate_fn=collate_decoded)
        if features:
            workers = 0
        elif self.augment != "none":  # random crops in the loader: the worker count must not depend on the machine
            workers = self.random_workers("train")
        else:
            workers = self.decode_workers(len(self._train_dataset), "train")
        return DataLoader(self._train_dataset, batch_size=self.batch_size, shuffle=sampler is None,
                          sampler=sampler, generator=generator, drop_last=False, num_workers=workers,
                          pin_memory=self.pins_memory and not features, persistent_workers=workers > 0,
                          multiprocessing_context=machine.worker_context(workers))

    def state_dict(self) -> dict[str, Any]:
        # In-run checkpoints (engine/checkpointing.py): the order and the crops of the next epochs depend on
        # these generators.
        state: dict[str, Any] = {}
        if self._train_generator is not None:
            state["train_generator"] = self._train_generator.get_state()
        augment_generator = getattr(self.tensor_augment, "generator", None)
        if augment_generator is not None:
            state["augment_generator"] = augment_generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores the data module after setup(): the batch augmentation exists already, while the
        # training loader (and its generator) is made afterwards.
        self._restored_generator_state = state_dict.get("train_generator")
        augment_generator = getattr(self.tensor_augment, "generator", None)
        if augment_generator is not None and "augment_generator" in state_dict:
            augment_generator.set_state(state_dict["augment_generator"])

    # ----------------------------------------------------------------- evaluation
    def eval_features(self, eval_set: EvalSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Test features and labels of an evaluation set (cached on disk across the jobs of a sweep)."""
        dataset = ImageDataset(eval_set.items, self.test_transform, on_error=self.on_error,
                               check_cache_dir=self.cache_dir)
        eval_set.skipped = dataset.skipped
        labels = torch.tensor([item.label for item in dataset.items])
        key = self._key(dataset.items, self.test_transform)
        if key not in self._eval_features:
            cache_dir = self.cache_dir if self.test_feature_cache else None
            # Encoding iterates a DataLoader, which draws a seed from the global RNG. Test features may be
            # computed before training (check_eval_images) or loaded from the cache: forked, so the training
            # run's random stream is the same either way (results must not depend on the cache's state).
            with torch.random.fork_rng(devices=[]):
                self._eval_features[key] = cached_features(
                    cache_dir, key, lambda: self._encode(dataset, f"test images ({eval_set.name})"),
                    f"{eval_set.dataset}/{eval_set.subset}", rows=len(dataset.items))
        return self._eval_features[key], labels

    def check_eval_images(self, eval_set: EvalSet) -> None:
        """Decode every image of `eval_set` now (before training), so a bad one stops the run before the training
        it would waste. With cached features that is their extraction, which the evaluation then reuses."""
        if not self.encodes_images:
            self.eval_features(eval_set)
        elif self.on_error == "skip":
            eval_set.skipped = ImageDataset(eval_set.items, self.test_transform, on_error="skip",
                                            check_cache_dir=self.cache_dir).skipped
        else:
            require_decodable(eval_set.items, self.cache_dir)

    def val_dataloader(self) -> DataLoader:
        """The few-shot val split of the training classes (test transform), one disjoint shard per rank. The
        loader has a generator of its own: validating must not draw from the training run's random stream."""
        rank, world = self._rank_world()
        if self.encodes_images:
            dataset: ImageDataset | FeatureDataset = ImageDataset(
                self.val_items, self.test_transform, on_error=self.on_error, check_cache_dir=self.cache_dir)
            workers = self.decode_workers(len(dataset), "few-shot val")
        else:
            feats, labels = self._split_features(self.val_items, "few-shot val")
            dataset, workers = FeatureDataset(feats, labels), 0
        batch = self.eval_batch_size if self.encodes_images else self.feature_eval_batch_size
        return DataLoader(dataset, batch_size=batch, sampler=ShardSampler(len(dataset), rank, world),
                          num_workers=workers, generator=torch.Generator(),
                          multiprocessing_context=machine.worker_context(workers))

    def test_dataloader(self) -> DataLoader:
        if self.active_eval is None:
            raise RuntimeError("set datamodule.active_eval before trainer.test")
        rank, world = self._rank_world()
        if self.encodes_images:
            # Prompted image features depend on the learned tokens: the images themselves, one shard per rank.
            images = ImageDataset(self.active_eval.items, self.test_transform, on_error=self.on_error,
                                  check_cache_dir=self.cache_dir)
            self.active_eval.skipped = images.skipped
            workers = self.decode_workers(len(images), f"test images ({self.active_eval.name})")
            return DataLoader(images, batch_size=self.eval_batch_size, sampler=ShardSampler(len(images), rank, world),
                              num_workers=workers, pin_memory=self.pins_memory,
                              multiprocessing_context=machine.worker_context(workers))
        feats, labels = self.eval_features(self.active_eval)
        dataset = FeatureDataset(feats, labels)
        return DataLoader(dataset, batch_size=self.feature_eval_batch_size,
                          sampler=ShardSampler(len(dataset), rank, world), num_workers=0)
