"""The typed schema of every config group: the single source of defaults.

Each group's YAML files (promptlab/conf/<group>/*.yaml) extend the dataclass of their group, so a key
that is not in the schema, or a value of the wrong type or outside a closed choice (an Enum), fails
when Hydra composes the config, with the key, the value and the choices in the message. Checks that a
type cannot express (batch size >= 1, shots >= 1 or -1, ...) live in `promptlab.config.validate`.

The method node is three concerns, each its own node:
  method.learner  the prompt learner's constructor arguments (`_target_`: its class)
  method.optim    optimiser (a `_partial_` node, the lr is filled in), lr, lr scaling, epochs, warm-up
  method.loader   batch sizes, augmentation, frozen-feature caching

Defaults are the reference's (CoOp/CoCoOp repository configs, KgCoOp's scripts); docs/reference.md
lists them with their sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import II, MISSING

from promptlab.config.method import (  # noqa: F401 - the shared method parts, importable from here as before
    OPTIMIZER_SCHEMAS,
    PROMPT_DESCRIPTIONS_SHA256,
    PROMPT_TEMPLATES,
    AdamConf,
    AdamWConf,
    Augment,
    AugmentBackend,
    ClassTokenPosition,
    LrScaling,
    MethodConf,
    MethodLoaderConf,
    OptimConf,
    ScheduleUnit,
    SGDConf,
    TrainCache,
)
from promptlab.toy.world import ToyWorldSpec

# OmegaConf reads these annotations at runtime (as strings, resolved with typing.get_type_hints), so they
# must be valid expressions on the oldest supported Python (3.10: `X | None` and `dict[str, int]` are).


class WeightsDtype(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


# "raise" is a keyword: the functional API names the member anyway (OmegaConf matches names).
OnError = Enum("OnError", {"raise": "raise", "skip": "skip"}, type=str)
OnError.__doc__ = "What to do with a missing or corrupt image: raise (default) or skip it (listed in the record)."

#: Lightning precision values promptlab runs with (checked by promptlab.config.validate).
PRECISIONS = ("32", "32-true", "64", "64-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true")


# --------------------------------------------------------------------------- paths, loader, model
@dataclass
class PathsConf:
    """Where data, outputs and caches live; each default also reads an environment variable."""

    data_root: str = "${oc.env:PROMPTLAB_DATA,data}"
    output_dir: str = "${oc.env:PROMPTLAB_OUTPUT,outputs}"
    cache_dir: str = "${oc.env:PROMPTLAB_CACHE,${paths.output_dir}/cache}"
    # null: <dataset>/split_fewshot, as the reference; or a folder of selections (e.g. promptlab-import shots --out)
    fewshot_dir: str | None = None


@dataclass
class LoaderConf:
    """How images are read on this machine (the method's batch sizes are in method.loader)."""

    # null: from the machine (engine/workers.py: decoding workers for evaluation and feature extraction, none
    # for randomly augmented loaders); a number: every image loader uses that many.
    num_workers: int | None = None
    # null: pinned when batches go to a CUDA device.
    pin_memory: bool | None = None
    on_error: OnError = OnError["raise"]  # type: ignore[valid-type]


@dataclass
class ModelConf:
    """A frozen CLIP: an open_clip name + tag, a local OpenAI-format weights file, or builtin:toyclip."""

    name: str = MISSING
    display_name: str | None = None
    pretrained: str | None = None  # open_clip tag, or a local open_clip-format file
    weights_file: str | None = None  # a local OpenAI-format file (JIT archive or state dict); wins over the tag
    quick_gelu: bool = True  # OpenAI weights were trained with QuickGELU
    weights_dtype: WeightsDtype = WeightsDtype.fp32  # the reference's fp16 weights are a known NaN source
    truncate_text: bool = True  # stop the text transformer after the last EOT; only where exact (docs/backbones.md)
    compile_image: bool = False  # torch.compile the frozen image tower (training and evaluation encodes)
    share_prefix: bool = True  # prompts sharing [SOS, context] encode it once; only where exact (docs/backbones.md)
    download_dir: str | None = None  # where open_clip downloads weights to (null: its own default cache)
    # Deprecated names (promptlab.config.deprecated moves them to the keys above before anything runs).
    checkpoint: str | None = None  # deprecated: model.weights_file
    cache_dir: str | None = None  # deprecated: model.download_dir


# --------------------------------------------------------------------------- datasets and protocols
@dataclass
class ToyWorldGeneratorConf:
    """The toy world's generator spec; its defaults are ToyWorldSpec's (promptlab.toy.world), their one place."""

    classes: str = ToyWorldSpec.classes
    image_size: int = ToyWorldSpec.image_size
    train_per_class: int = ToyWorldSpec.train_per_class
    val_per_class: int = ToyWorldSpec.val_per_class
    test_per_class: int = ToyWorldSpec.test_per_class
    spurious: float = ToyWorldSpec.spurious
    seed: int = ToyWorldSpec.seed


@dataclass
class DatasetConf:
    """A dataset in the CoOp on-disk layout (docs/data_layout.md); `reader` names the parser."""

    name: str = MISSING
    display_name: str | None = None
    reader: str = MISSING
    dataset_dir: str = MISSING
    image_dir: str = "images"
    split_file: str | None = None
    split_files: dict[str, str] | None = None
    train_dir: str | None = None
    test_dir: str | None = None
    classnames_file: str | None = None
    class_folders: str | None = None
    split_fractions: dict[str, float] | None = None
    split_seed: int | None = None
    rename_classes: dict[str, str] | None = None
    num_classes: int | None = None  # null: no check
    # Training-image augmentation of the methods that train by gradient (method.loader.augment follows it):
    # the reference's RandomResizedCrop + flip on real images (CoOp configs, INPUT.TRANSFORMS); the toy
    # worlds set none, which keeps their training features cacheable (docs/reference.md, "Transforms").
    augment: Augment = Augment.coop
    test_only: bool = False  # evaluation only (domain-generalisation targets): refused as a training source
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    # The dataset's prompt ensemble (prompts.templates=dataset_ensemble): the CLIP paper's, data/prompts.md.
    ensemble_templates: list[str] | None = None
    # The reference's epochs by shot count, used when method.optim.epochs is null (CoOp).
    epochs_by_shots: dict[int, int] = field(default_factory=lambda: {1: 50, 2: 100, 4: 100, 8: 200, 16: 200})
    generator: ToyWorldGeneratorConf | None = None


@dataclass
class ProtocolConf:
    # A registered protocol (promptlab.protocols.protocol_names()), checked by promptlab.config.validate: the
    # registry, not a closed Enum, so that a new protocol is its module and its YAML only.
    name: str = MISSING
    targets: dict[str, DatasetConf] = field(default_factory=dict)


# --------------------------------------------------------------------------- hand-written prompts
@dataclass
class PromptsConf:
    """The hand-written prompts of zero-shot CLIP and of KgCoOp's frozen targets (promptlab.methods.prompts)."""

    templates: str = "single"  # single (dataset.templates) | clip80 | dataset_ensemble | a template file's path
    descriptions: str | None = None  # a JSON file class name -> sentences (CuPL); missing classes use templates
    combine: bool = False  # described classes average their sentences together with the filled templates

# --------------------------------------------------------------------------- trainer, loggers
@dataclass
class TrainerConf:
    """lightning.Trainer arguments (max_epochs comes from method.optim)."""

    _target_: str = "lightning.Trainer"
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    precision: str = "32"
    strategy: str = "auto"
    log_every_n_steps: int = 5
    enable_checkpointing: bool = False  # the learned prompt is saved by promptlab (prompt_learner.pt)
    enable_model_summary: bool = False
    enable_progress_bar: bool = True
    num_sanity_val_steps: int = 0
    deterministic: bool = False
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1


@dataclass
class CSVLoggerConf:
    _target_: str = "lightning.pytorch.loggers.CSVLogger"
    save_dir: str | None = None  # null: the run's folder
    name: str = "csv"
    version: str = ""


@dataclass
class WandbLoggerConf:
    """One W&B run per job: group = the sweep, job_type = the method, name = the job's overrides."""

    _target_: str = "lightning.pytorch.loggers.WandbLogger"
    project: str = "promptlab"
    entity: str | None = None
    group: str | None = II("sweep_name")
    tags: list[str] = field(default_factory=list)
    mode: str | None = None  # null: WANDB_MODE or wandb's default; offline / disabled work without network
    save_dir: str | None = None  # null: the run's folder


@dataclass
class TensorBoardLoggerConf:
    _target_: str = "lightning.pytorch.loggers.TensorBoardLogger"
    save_dir: str | None = None  # null: the run's folder
    name: str = "tensorboard"
    version: str = ""


@dataclass
class MLFlowLoggerConf:
    _target_: str = "lightning.pytorch.loggers.MLFlowLogger"
    experiment_name: str = "promptlab"
    run_name: str | None = None  # null: the job's overrides
    tracking_uri: str | None = "${oc.env:MLFLOW_TRACKING_URI,null}"  # null: a file store under save_dir
    save_dir: str | None = "${paths.output_dir}/mlruns"  # shared by every run of the output folder


class Selection(str, Enum):
    """Which epoch's prompt is evaluated: the last (the reference), or the best on the few-shot val split."""

    last = "last"
    best_val = "best_val"


@dataclass
class ValidationConf:
    """Validation on the few-shot val split of the training classes (never test data). Its accuracy is recorded
    and is what `main()` hands a Hydra sweeper (Optuna, hparams_search) to optimise."""

    every_n_epochs: int = 0  # 0: once, after training; N: also at every N-th epoch end (the history is recorded)
    selection: Selection = Selection.last  # best_val needs every_n_epochs >= 1


@dataclass
class CheckpointConf:
    """In-run checkpoints (`<run dir>/last.ckpt`, promptlab.engine.checkpointing): a rerun of the job resumes."""

    enabled: bool = True
    # When it is written (always at epoch ends, and after the last epoch): at the first epoch end every_n_minutes
    # after the previous write, and every every_n_epochs epochs (0: not by count). A write costs ~10 ms.
    every_n_epochs: int = 0
    every_n_minutes: float | None = 1.0
    keep: bool = False  # keep last.ckpt after the job completes (a complete job is skipped, never resumed)


# --------------------------------------------------------------------------- the root
@dataclass
class TrainConfig:
    """The root of `promptlab-train`'s config (promptlab/conf/train.yaml)."""

    paths: PathsConf = field(default_factory=PathsConf)
    model: ModelConf = MISSING
    dataset: DatasetConf = MISSING
    method: Any = MISSING  # one of the MethodConf subclasses, chosen by the method group
    protocol: ProtocolConf = MISSING
    prompts: PromptsConf = field(default_factory=PromptsConf)  # zero-shot / KgCoOp prompts: template set, descriptions
    trainer: TrainerConf = MISSING
    logger: dict[str, Any] = field(default_factory=dict)  # name -> a Lightning logger _target_ node
    loader: LoaderConf = field(default_factory=LoaderConf)
    seed: int = 1  # few-shot selection, initialisation, data order (the papers use 1, 2, 3)
    shots: int = 16  # training images per class; -1 = all
    num_threads: int | None = None  # torch intra-op threads per process (null: torch's default)
    sweep_name: str = "${now:%Y-%m-%d_%H-%M-%S-%f}"
    resume: bool = True  # skip a job whose folder already holds a complete record; continue one with a checkpoint
    checkpoint: CheckpointConf = field(default_factory=CheckpointConf)
    validation: ValidationConf = field(default_factory=ValidationConf)
    analysis: bool = False  # run the prompt-drift diagnostics at the end (promptlab-analyze)
    load_prompt_strict: bool = True  # refuse a prompt learned on another backbone (architecture or weights)
    load_prompt: str | None = None  # a run's prompt_learner.pt: start from it (epochs 0: evaluate it only)
    test_feature_cache: bool = True  # keep test-image features on disk (paths.cache_dir) for the sweep's other jobs
    eval_cache: bool | None = None  # deprecated: test_feature_cache (promptlab.config.deprecated)
    # In a multirun on several GPUs, each single-device job takes GPU (job number mod GPU count), so parallel
    # jobs (launcher=joblib) spread over the GPUs instead of all landing on GPU 0.
    assign_gpus: bool = True
    run_name: str = "${method.name}_${dataset.name}_${shots}shot_seed${seed}"



LOGGER_SCHEMAS: dict[str, type] = {
    "csv": CSVLoggerConf,
    "wandb": WandbLoggerConf,
    "tensorboard": TensorBoardLoggerConf,
    "mlflow": MLFlowLoggerConf,
}


def method_schemas() -> dict[str, type[MethodConf]]:
    """Each registered method's config dataclass, by method name (promptlab.methods.registry)."""
    from promptlab.methods.registry import registered_methods

    return {name: spec.config for name, spec in registered_methods().items()}


def __getattr__(name: str) -> Any:
    # METHOD_SCHEMAS and the methods' dataclasses (CoOpLearnerConf, ...) live beside their learners now; they stay
    # reachable here, resolved on first use (an import at module level would be circular: the method modules
    # import the shared parts from promptlab.config).
    if name == "METHOD_SCHEMAS":
        return method_schemas()
    if name.endswith("Conf") or name.endswith("Options") or name == "ProGradInitSplit":
        import sys

        from promptlab.methods.registry import discover

        discover()
        for module_name, module in list(sys.modules.items()):
            if module_name.startswith("promptlab.methods.") and name in vars(module):
                return vars(module)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
