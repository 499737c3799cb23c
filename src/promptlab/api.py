"""The small public Python API: compose and run jobs from overrides, load a saved prompt and classify
images with it, read a sweep into tables.

    import promptlab
    record = promptlab.run(["method=coop", "seed=2"])            # one job, as promptlab-train runs it
    clf = promptlab.load_prompt("outputs/runs/.../prompt_learner.pt")
    clf.classify(["cat.jpg", "dog.jpg"])                          # -> class names
    tables = promptlab.read_sweep("outputs/sweeps/demo")
    print(tables["base2novel"].to_markdown())
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from promptlab.config import compose
from promptlab.config.deprecated import rename_mapping
from promptlab.config.registry import typed
from promptlab.engine.build import RunParts, build_learner, build_parts, load_learner
from promptlab.errors import ConfigError, MissingPathError
from promptlab.methods.base import RunContext

__all__ = ["PromptClassifier", "build_run", "compose", "load_prompt", "read_sweep", "run"]


def build_run(overrides: Sequence[str] = (), device: str | torch.device = "cpu") -> RunParts:
    """The parts of a job (frozen CLIP, protocol data, prompt learner, data module) from overrides, checked
    as promptlab-train checks them; nothing is trained."""
    cfg = compose(overrides)
    prompt = Path(cfg.load_prompt) if cfg.load_prompt else None
    return build_parts(cfg, device=device, prompt=prompt)


def run(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run one job in this process, as `promptlab-train <overrides>` does, and return its record.

    Without Hydra's run folder the job writes under <paths.output_dir>/runs/<run_name>; pass
    `run_name=...` to choose it (a rerun of the same job there resumes it).
    """
    from promptlab.train import run as run_job

    return run_job(compose(overrides, check=False))


def read_sweep(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], ignore_keys: Sequence[str] = ()):
    """The tables of a sweep folder (or run folders, or any parent of them): see promptlab.results."""
    from promptlab.results.aggregate import read_sweep as read

    return read(path, ignore_keys=ignore_keys)


@dataclass
class PromptClassifier:
    """A learned prompt with its frozen backbone: classifies images among a class list (by default the
    classes it was trained on; `set_classnames` evaluates it on others, e.g. novel classes)."""

    clip: Any
    learner: Any
    config: DictConfig
    device: torch.device

    @property
    def classnames(self) -> list[str]:
        return list(self.learner.classnames)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        self.learner.set_classnames(self.clip, list(classnames))
        self.learner.to(self.device)

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """Image files or PIL images -> the backbone's test-time tensor batch."""
        from PIL import Image

        from promptlab.data.transforms import build_transform

        transform = build_transform(self.clip.image_size, train=False)
        tensors = []
        for image in images:
            if isinstance(image, (str, os.PathLike)):
                with Image.open(image) as opened:
                    image = opened.convert("RGB")
            tensors.append(transform(image.convert("RGB")))
        return torch.stack(tensors).to(self.device)

    @torch.no_grad()
    def logits(self, images: Sequence[Any] | torch.Tensor) -> torch.Tensor:
        """Scaled cosine logits [B, C] for image files, PIL images or a preprocessed batch."""
        from promptlab.methods import logits_from_features

        batch = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        features = self.learner.encode_images(self.clip, batch.to(self.device))
        if self.learner.direct_logits:  # a learner that scores images itself (Tip-Adapter-F)
            return self.learner.logits(self.clip, features)
        text = self.learner(self.clip, features if self.learner.instance_conditional else None).float()
        return logits_from_features(features, text, self.clip.logit_scale())

    def classify(self, images: Sequence[Any] | torch.Tensor) -> list[str]:
        """The predicted class name of each image."""
        names = self.classnames
        return [names[i] for i in self.logits(images).argmax(dim=-1).tolist()]


def load_prompt(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    model_overrides: dict[str, Any] | None = None,
    strict: bool = True,
) -> PromptClassifier:
    """Load a run's prompt_learner.pt with the backbone it was trained on and its training class names.

    `model_overrides` changes how the backbone is found without changing which one it is, e.g.
    {"weights_file": "/models/ViT-B-16.pt"} when the run used a path of another machine. A prompt whose stored
    backbone fingerprint differs from the loaded backbone is refused unless strict=False.
    """
    from promptlab.models import load_clip_from_config

    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"{path}: no such file; pass a run's prompt_learner.pt.")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or not {"state_dict", "method", "model", "train_classnames"} <= set(payload):
        raise ConfigError(f"{path} is not a promptlab prompt file (prompt_learner.pt written by promptlab-train).")
    overrides = rename_mapping(dict(model_overrides or {}), root="model", warn=True)  # deprecated names too
    model_cfg = OmegaConf.merge(typed({"model": payload["model"]}).model, overrides)
    method_cfg = typed({"method": payload["method"]}).method
    device = torch.device(device)
    clip = load_clip_from_config(model_cfg, device=device)
    names = list(payload["train_classnames"])
    learner = build_learner(method_cfg, RunContext(clip=clip, classnames=names, init_seed=0))
    learner.set_classnames(clip, names)
    load_learner(path, learner, clip=clip, strict=strict)
    learner.to(device).eval()
    return PromptClassifier(clip=clip, learner=learner, config=method_cfg, device=device)
