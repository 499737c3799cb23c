"""One LightningModule for every method: frozen CLIP + a prompt learner, cross-entropy, micro top-1.

Zero-shot is the same module with a fixed prompt and no fitting. Only the learner's tensors are
trainable, handed to the optimiser and saved in checkpoints; the frozen CLIP is rebuilt from its
config. Evaluation on another class list (novel classes, another dataset) is `learner.set_classnames`.
A learner with `direct_logits` (linear probe, Tip-Adapter) scores images itself (`learner.logits`), in
training and evaluation alike.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import lightning as L
import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from promptlab.config.method import OptimConf, SGDConf
from promptlab.errors import NonFiniteLossError
from promptlab.methods.base import PromptLearner, TrainingStep, logits_from_features
from promptlab.models.frozen import FrozenCLIP
from promptlab.results.metrics import accuracy_percent

_OPTIM, _SGD = OptimConf(), SGDConf()


def reference_sgd() -> Callable[..., torch.optim.Optimizer]:
    """The reference's optimiser (SGD with the schema's momentum and weight decay), awaiting params and lr."""
    return partial(torch.optim.SGD, momentum=_SGD.momentum, weight_decay=_SGD.weight_decay,
                   dampening=_SGD.dampening, nesterov=_SGD.nesterov)


class CountMetric(Metric):
    """Exact integer counts of correct predictions and images, summed across DDP ranks."""

    full_state_update = False
    correct: torch.Tensor  # states (add_state)
    total: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        self.correct += (predictions == labels).sum().long()
        self.total += torch.tensor(labels.numel(), dtype=torch.long, device=self.total.device)

    def compute(self) -> tuple[int, int]:
        return int(self.correct), int(self.total)


class ClassCounts(Metric):
    """Per-class correct/total counts and top-5 hits, summed across DDP ranks: mean-per-class accuracy (the
    metric some datasets are reported with) and top-5 accuracy beside the micro top-1 of CountMetric."""

    full_state_update = False
    correct: torch.Tensor  # states (add_state), per class
    total: torch.Tensor
    topk: torch.Tensor  # top-5 hits

    def __init__(self, num_classes: int, k: int = 5) -> None:
        super().__init__()
        self.num_classes, self.k = num_classes, k
        self.add_state("correct", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("topk", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        # One bincount over (label, hit) pairs gives both per-class counts (no boolean indexing: no host sync).
        hit = (logits.argmax(dim=-1) == labels).long()
        counts = torch.bincount(labels * 2 + hit, minlength=2 * self.num_classes).view(self.num_classes, 2)
        self.total += counts.sum(dim=1)
        self.correct += counts[:, 1]
        top = logits.topk(min(self.k, logits.shape[-1]), dim=-1).indices
        self.topk += (top == labels[:, None]).any(dim=-1).sum().long()

    def compute(self) -> dict[str, Any]:
        seen = self.total > 0
        per_class = self.correct[seen].double() / self.total[seen].double()
        return {"n_correct_top5": int(self.topk),
                "top5_acc": accuracy_percent(int(self.topk), int(self.total.sum())),
                "mean_per_class_acc": float(per_class.mean() * 100.0) if bool(seen.any()) else 0.0}


def warmup_cosine_factor(epoch: int, max_epochs: int, warmup_epochs: int, warmup_lr: float, base_lr: float) -> float:
    """Learning-rate multiplier of epoch `epoch` (0-based), as Dassl's ConstantWarmupScheduler + cosine.

    Epochs < warmup_epochs run at the constant `warmup_lr`; afterwards the successor
    CosineAnnealingLR(T_max=max_epochs) starts from the base lr and is stepped once per epoch, so
    epoch e >= warmup runs at base_lr * 0.5 * (1 + cos(pi * (e - warmup) / max_epochs)) (Dassl
    dassl/optim/lr_scheduler.py; T_max is the full max_epoch there, not max_epoch - warmup).
    """
    if epoch < warmup_epochs:
        return warmup_lr / base_lr
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / max_epochs))


class PromptLearningModule(L.LightningModule):
    def __init__(
        self,
        clip: FrozenCLIP,
        learner: PromptLearner,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        lr: float = _OPTIM.lr,
        max_epochs: int = 1,
        warmup_epochs: int = _OPTIM.warmup_epochs,
        warmup_lr: float = _OPTIM.warmup_lr,
        run_name: str = "run",
        schedule_unit: str = "epoch",
    ) -> None:
        """`optimizer(params, lr=...)` builds the optimiser (None: the reference SGD); defaults are the schema's
        (promptlab.config.method.OptimConf), the single place where they are written."""
        super().__init__()
        self.clip = clip
        self.learner = learner
        self.optimizer_factory = optimizer or reference_sgd()
        self.lr = lr
        self.max_epochs, self.warmup_epochs, self.warmup_lr = max_epochs, warmup_epochs, warmup_lr
        self.run_name = run_name
        self.schedule_unit = str(getattr(schedule_unit, "value", schedule_unit))
        self.train_acc = MulticlassAccuracy(num_classes=max(len(learner.classnames), 2), average="micro")
        self._eval_text: torch.Tensor | None = None
        self.eval_counts = CountMetric()
        self.last_eval: dict[str, Any] = {}
        self.last_val: dict[str, Any] = {}
        self.val_history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- forward
    def image_features(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's image features: cached frozen ones when the batch carries them, else the learner's."""
        if "feature" in batch and not self.learner.encodes_images:
            return batch["feature"].float()
        return self.learner.encode_images(self.clip, batch["image"])

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        if self.learner.direct_logits:
            return self.learner.logits(self.clip, image_features)
        text = self.learner(self.clip, image_features)
        return logits_from_features(image_features, text.float(), self.clip.logit_scale())

    # ----------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        # The learner's class list is the training list; rebuild buffers on the training device.
        self.train_acc = MulticlassAccuracy(num_classes=max(len(self.learner.classnames), 2),
                                            average="micro").to(self.device)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        feats = self.image_features(batch)
        labels = batch["label"]
        if self.learner.direct_logits:
            text, logits = None, self.learner.logits(self.clip, feats)
        else:
            text = self.learner(self.clip, feats).float()
            logits = logits_from_features(feats, text, self.clip.logit_scale())
        loss = self.learner.training_loss(self.clip, TrainingStep(batch.get("image"), feats, text, logits, labels))
        total = loss.total
        if not torch.isfinite(total):
            raise NonFiniteLossError(
                f"run '{self.run_name}': non-finite training loss ({total.item()}) at epoch {self.current_epoch}, "
                f"step {self.global_step}. Typical causes: fp16 weights (use model.weights_dtype=fp32 and "
                "trainer.precision=bf16-mixed or 32) or a learning rate that is too high (method.optim.lr)."
            )
        size = labels.shape[0]
        self.train_acc(logits.argmax(dim=-1), labels)
        # train/loss is the optimised total; each named term (and each logged-only value) has its own key.
        self.log("train/loss", total.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        if len(loss.terms) > 1:
            for key, term in loss.terms.items():
                self.log(f"train/{key}", term.detach(), on_step=False, on_epoch=True, batch_size=size)
        for key, value in loss.logged.items():
            self.log(f"train/{key}", value, on_step=False, on_epoch=True, batch_size=size)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)  # configure_optimizers returns one optimizer
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=False, on_epoch=True)
        return loss.optimised

    def loss_terms_logged(self) -> dict[str, float]:
        """The last epoch's mean of the optimised loss and of its named terms (for the run record)."""
        metrics = self.trainer.callback_metrics if self._trainer is not None else {}
        out = {}
        for key, value in metrics.items():
            if key.startswith("train/") and key not in ("train/acc", "train/lr", "train/loss_step"):
                name = key.removeprefix("train/").removesuffix("_epoch")
                out[name] = float(value)
        return out

    def configure_callbacks(self) -> list[L.Callback]:
        # Callbacks a learner needs for its training (PromptSRC's Gaussian prompt aggregation); fresh per fit.
        return list(self.learner.callbacks())

    def configure_optimizers(self):
        params = [p for p in self.learner.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params, lr=self.lr)
        if self.schedule_unit == "step":
            # Tip-Adapter-F: CosineAnnealingLR(T_max = epochs x iterations) stepped every iteration, no warm-up.
            total = max(int(self.trainer.estimated_stepping_batches), 1)
            per_step = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total)))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": per_step, "interval": "step"}}
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda epoch: warmup_cosine_factor(epoch, self.max_epochs, self.warmup_epochs, self.warmup_lr, self.lr),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ----------------------------------------------------------------- evaluation
    def on_test_epoch_start(self) -> None:
        self.eval_counts = CountMetric().to(self.device)
        self.class_counts = ClassCounts(len(self.learner.classnames)).to(self.device)
        self._eval_text = None
        if self.learner.static_text:
            with torch.no_grad():  # static prompts: one text pass for the whole test set
                self._eval_text = self.learner(self.clip, None).float()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        feats = self.image_features(batch)
        if self._eval_text is not None:
            logits = logits_from_features(feats, self._eval_text, self.clip.logit_scale())
        else:
            logits = self(feats)
        self.eval_counts.update(logits.argmax(dim=-1), batch["label"])
        self.class_counts.update(logits, batch["label"])

    def on_test_epoch_end(self) -> None:
        # compute() syncs the integer counts across DDP ranks (summed, each image counted once); the
        # accuracy is derived from them, so 2 of 5 is exactly 40.0.
        n_correct, n_images = self.eval_counts.compute()
        acc = accuracy_percent(n_correct, n_images)
        self.last_eval = {"acc": acc, "n_images": n_images, "n_correct": n_correct, **self.class_counts.compute()}
        self.log("test/acc", acc, sync_dist=False)
        self._eval_text = None

    # ----------------------------------------------------------------- validation (few-shot val split)
    # The val split's images of the training classes, scored as the test sets are; never test data. During fit
    # it runs every validation.every_n_epochs epochs (Lightning's check_val_every_n_epoch), and train.py runs it
    # once more after training when the last epoch was not validated.
    def on_validation_epoch_start(self) -> None:
        self.on_test_epoch_start()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.test_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        n_correct, n_images = self.eval_counts.compute()
        acc = accuracy_percent(n_correct, n_images)
        fitting = self.trainer.state.fn == "fit"
        epoch = self.current_epoch + 1 if fitting else None
        self.last_val = {"acc": acc, "n_images": n_images, "n_correct": n_correct, "epoch": epoch}
        if fitting:
            self.val_history.append({"epoch": epoch, "acc": acc})
        self.log("val/acc", acc, sync_dist=False)
        self._eval_text = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["val_history"] = list(self.val_history)  # a resumed run keeps the epochs validated before

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_history = list(checkpoint.get("val_history", []))

    # ----------------------------------------------------------------- epoch selection
    @torch.no_grad()
    def accuracy_on(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> tuple[int, int]:
        """(correct, total) of the current learner on held-out features of its training class list."""
        correct = 0
        for start in range(0, labels.shape[0], batch_size):
            feats = features[start : start + batch_size].to(self.device).float()
            correct += int((self(feats).argmax(dim=-1).cpu() == labels[start : start + batch_size]).sum())
        return correct, int(labels.shape[0])

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        # Only the learned tensors: the frozen CLIP is rebuilt from its config (a CoOp checkpoint is KBs).
        return self.learner.state_dict(destination=destination, prefix=prefix + "learner.", keep_vars=keep_vars)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        learner_state = {k.removeprefix("learner."): v for k, v in state_dict.items() if k.startswith("learner.")}
        return self.learner.load_state_dict(learner_state, strict=strict, assign=assign)


class EpochSelector(L.Callback):
    """Keeps the learner's state of the epoch with the best accuracy on held-out features and restores it when
    training ends (Tip-Adapter-F). The first strict maximum wins; every rank evaluates the whole set."""

    def __init__(self, features: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 split: str = "val") -> None:
        """`split` names the held-out set for the record; the features may be given later (before fit)."""
        self.features, self.labels, self.split = features, labels, split
        self.best: tuple[int, int] | None = None  # (correct, epoch)
        self.history: list[float] = []
        self._state: dict[str, torch.Tensor] | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: PromptLearningModule) -> None:  # type: ignore[override]
        if self.features is None or self.labels is None:
            raise RuntimeError("EpochSelector: no held-out features were given before training.")
        correct, total = pl_module.accuracy_on(self.features, self.labels)
        self.consider(correct, accuracy_percent(correct, total), trainer.current_epoch, pl_module)

    def consider(self, correct: int, acc: float, epoch: int, pl_module: PromptLearningModule) -> None:
        """Record epoch `epoch` (0-based) and keep the learner's state if it is the first strict best."""
        self.history.append(acc)
        if self.best is None or correct > self.best[0]:
            self.best = (correct, epoch)
            self._state = copy.deepcopy({k: v.detach().cpu() for k, v in pl_module.learner.state_dict().items()})

    def state_dict(self) -> dict[str, Any]:
        # In-run checkpoints: a resumed run must still know the best epoch seen before the interruption.
        return {"best": list(self.best) if self.best is not None else None, "history": list(self.history),
                "state": self._state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        best = state_dict.get("best")
        self.best = (int(best[0]), int(best[1])) if best is not None else None
        self.history = list(state_dict.get("history", []))
        self._state = state_dict.get("state")

    def on_fit_end(self, trainer: L.Trainer, pl_module: PromptLearningModule) -> None:  # type: ignore[override]
        if self._state is not None:
            pl_module.learner.load_state_dict(self._state)

    def summary(self) -> dict[str, Any]:
        """What the record says about the choice (epochs 1-based)."""
        if self.best is None:
            return {}
        return {"selected_epoch": self.best[1] + 1, "selected_on": self.split}


class ValidationSelector(EpochSelector):
    """validation.selection=best_val: the validated epoch with the best accuracy on the few-shot val split (first
    strict maximum) is kept and restored when training ends. It reads the module's validation loop, so it works
    for every learner, image-side prompts included."""

    def __init__(self) -> None:
        super().__init__(split="val")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: PromptLearningModule) -> None:  # type: ignore[override]
        # Lightning validates before the train-epoch-end hooks: last_val is this epoch's when it was validated.
        val = pl_module.last_val
        if val.get("epoch") == trainer.current_epoch + 1:
            self.consider(int(val["n_correct"]), float(val["acc"]), trainer.current_epoch, pl_module)
