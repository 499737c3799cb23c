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

from promptlab.toy.world import ToyWorldSpec

# OmegaConf reads these annotations at runtime (as strings, resolved with typing.get_type_hints), so they
# must be valid expressions on the oldest supported Python (3.10: `X | None` and `dict[str, int]` are).


# --------------------------------------------------------------------------- closed choices
class Augment(str, Enum):
    """Training-image augmentation: none, horizontal flip, or the reference's RandomResizedCrop + flip."""

    none = "none"
    flip = "flip"
    coop = "coop"


class AugmentBackend(str, Enum):
    """Where training augmentation runs: tensor (decode once, batched on the device) or pil (the reference's)."""

    tensor = "tensor"
    pil = "pil"


class TrainCache(str, Enum):
    """Frozen training features: auto (on exactly when exact), on, off."""

    auto = "auto"
    on = "on"
    off = "off"


class ClassTokenPosition(str, Enum):
    end = "end"
    middle = "middle"
    front = "front"


class LrScaling(str, Enum):
    """lr *= f(batch_size / reference_batch_size): none, linear (x) or sqrt."""

    none = "none"
    linear = "linear"
    sqrt = "sqrt"


class ScheduleUnit(str, Enum):
    """What the cosine schedule counts: epochs (Dassl, CoOp) or iterations (Tip-Adapter-F)."""

    epoch = "epoch"
    step = "step"


class WeightsDtype(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class ProtocolName(str, Enum):
    base2novel = "base2novel"
    fewshot = "fewshot"
    cross_dataset = "cross_dataset"
    domain_generalization = "domain_generalization"


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
    """A frozen CLIP: an open_clip name + tag, a local OpenAI-format file, or builtin:toyclip."""

    name: str = MISSING
    display_name: str | None = None
    pretrained: str | None = None  # open_clip tag, or a local open_clip-format file
    checkpoint: str | None = None  # a local OpenAI-format file (JIT archive or state dict); wins over the tag
    quick_gelu: bool = True  # OpenAI weights were trained with QuickGELU
    weights_dtype: WeightsDtype = WeightsDtype.fp32  # the reference's fp16 weights are a known NaN source
    truncate_text: bool = True  # stop the text transformer after the last EOT; only where exact (docs/backbones.md)
    compile_image: bool = False  # torch.compile the frozen image tower (training and evaluation encodes)
    share_prefix: bool = True  # prompts sharing [SOS, context] encode it once; only where exact (docs/backbones.md)
    cache_dir: str | None = None  # open_clip's download cache


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
    name: ProtocolName = MISSING
    targets: dict[str, DatasetConf] = field(default_factory=dict)


# --------------------------------------------------------------------------- hand-written prompts
@dataclass
class PromptsConf:
    """The hand-written prompts of zero-shot CLIP and of KgCoOp's frozen targets (promptlab.methods.prompts)."""

    templates: str = "single"  # single (dataset.templates) | clip80 | dataset_ensemble | a template file's path
    descriptions: str | None = None  # a JSON file class name -> sentences (CuPL); missing classes use templates
    combine: bool = False  # described classes average their sentences together with the filled templates


# The learners that read hand-written prompts get them resolved from `prompts` (config/registry.py resolvers),
# so a run's saved config holds the exact template list and the description file's content hash.
PROMPT_TEMPLATES = "prompt_templates:${prompts.templates},${dataset.templates},${dataset.ensemble_templates}," \
    "${dataset.name}"
PROMPT_DESCRIPTIONS_SHA256 = "file_sha256:${prompts.descriptions}"


# --------------------------------------------------------------------------- methods
@dataclass
class ZeroShotLearnerConf:
    _target_: str = "promptlab.methods.ZeroShotPrompts"
    templates: list[str] = II(PROMPT_TEMPLATES)
    descriptions: str | None = II("prompts.descriptions")
    descriptions_sha256: str | None = II(PROMPT_DESCRIPTIONS_SHA256)
    combine_templates: bool = II("prompts.combine")


@dataclass
class CoOpLearnerConf:
    """n_ctx and ctx_init: with an init phrase, n_ctx must equal the phrase's token count (the reference
    learns one vector per init token); a different n_ctx is refused. Without one, n_ctx random vectors."""

    _target_: str = "promptlab.methods.CoOpPrompts"
    n_ctx: int = 16
    ctx_init: str | None = None
    csc: bool = False  # class-specific context
    class_token_position: ClassTokenPosition = ClassTokenPosition.end


@dataclass
class CoCoOpLearnerConf:
    _target_: str = "promptlab.methods.CoCoOpPrompts"
    n_ctx: int = 4
    ctx_init: str | None = "a photo of a"
    class_chunk: int | None = None  # classes per text-encoder call (bounds memory, e.g. 100 for ImageNet)
    checkpoint_chunks: bool = False  # recompute chunk activations in backward (compute for memory)


@dataclass
class KgCoOpLearnerConf(CoOpLearnerConf):
    _target_: str = "promptlab.methods.KgCoOpPrompts"
    n_ctx: int = 4
    ctx_init: str | None = "a photo of a"
    templates: list[str] = II(PROMPT_TEMPLATES)
    descriptions: str | None = II("prompts.descriptions")
    descriptions_sha256: str | None = II(PROMPT_DESCRIPTIONS_SHA256)
    combine_templates: bool = II("prompts.combine")
    kg_weight: float = 8.0


@dataclass
class LinearProbeLearnerConf:
    """Logistic regression on frozen image features, C searched on the few-shot val split (CoOp lpclip/)."""

    _target_: str = "promptlab.methods.LinearProbe"
    normalize: bool = True  # false: un-normalised features, as the reference
    c_grid: list[float] = field(default_factory=lambda: [1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6])
    search_steps: int = 8  # log10 bisection steps around the best grid value
    max_iter: int = 1000


@dataclass
class TipAdapterLearnerConf:
    """Training-free cache model (Tip-Adapter). search_scale / search_step are [beta, alpha], the reference's
    order; the defaults are its ImageNet / OxfordPets values (per-dataset ones in conf/method_dataset)."""

    _target_: str = "promptlab.methods.TipAdapter"
    templates: list[str] = II(PROMPT_TEMPLATES)  # the zero-shot part follows prompts.templates
    init_alpha: float = 1.17
    init_beta: float = 1.0
    search: bool = True  # alpha/beta grid search on the few-shot val split
    search_scale: list[float] = field(default_factory=lambda: [7.0, 3.0])
    search_step: list[int] = field(default_factory=lambda: [200, 20])


@dataclass
class TipAdapterFLearnerConf(TipAdapterLearnerConf):
    """Tip-Adapter-F: the cache keys become a trainable linear layer. select_on_test=true keeps the epoch with
    the best TEST accuracy (the reference's choice, Tip-Adapter#11); the default selects on the val split."""

    _target_: str = "promptlab.methods.TipAdapterF"
    select_on_test: bool = False


@dataclass
class SGDConf:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dampening: float = 0.0
    nesterov: bool = False


@dataclass
class AdamWConf:
    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01


@dataclass
class OptimConf:
    """Optimiser and schedule: Dassl's constant warm-up then cosine over `epochs`, stepped per epoch."""

    # A _partial_ optimiser node from the optimizer group (sgd: the reference), placed here; lr is passed
    # when it is built. MISSING in the schema: the optimizer group is composed before the method (train.yaml)
    # so that a method file can override its choice (tip_adapter_f: adamw), and merging the method's schema
    # must keep the chosen node (a MISSING value never replaces one; None would).
    optimizer: Any = MISSING
    lr: float = 0.002
    lr_scaling: LrScaling = LrScaling.none
    reference_batch_size: int = 32  # the batch size `lr` was tuned for
    epochs: int | None = None  # null: dataset.epochs_by_shots at the run's shot count
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    schedule_unit: ScheduleUnit = ScheduleUnit.epoch  # step: cosine over epochs x iterations, no warm-up


@dataclass
class MethodLoaderConf:
    batch_size: int = 32
    eval_batch_size: int = 100
    # The dataset's (dataset.augment: the reference's crop + flip on real data, none on the toy world); the
    # methods that fit on frozen features without augmentation in their reference set none.
    augment: Augment = II("dataset.augment")
    # Frozen training features: auto = on exactly when exact (augment=none). on + augmentation needs
    # train_views=K: K fixed augmented views per image (an approximation, documented).
    train_cache: TrainCache = TrainCache.auto
    train_views: int = 0
    # tensor: each training image decoded once, crop/flip/normalise per batch on the device (the reference's
    # box distribution, data/tensor_augment.py); pil: the reference's per-image PIL pipeline, exactly.
    augment_backend: AugmentBackend = AugmentBackend.tensor
    decoded_cache_disk: bool = False  # also keep the decoded training images under paths.cache_dir/decoded


@dataclass
class MethodConf:
    name: str = MISSING
    display_name: str = MISSING
    learner: Any = MISSING
    optim: OptimConf = field(default_factory=OptimConf)
    loader: MethodLoaderConf = field(default_factory=MethodLoaderConf)


@dataclass
class ZeroShotMethodConf(MethodConf):
    name: str = "zeroshot"
    display_name: str = "CLIP"
    learner: ZeroShotLearnerConf = field(default_factory=ZeroShotLearnerConf)
    optim: OptimConf = field(default_factory=lambda: OptimConf(epochs=0))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(augment=Augment.none))


@dataclass
class CoOpMethodConf(MethodConf):
    name: str = "coop"
    display_name: str = "CoOp"
    learner: CoOpLearnerConf = field(default_factory=CoOpLearnerConf)


@dataclass
class CoCoOpMethodConf(MethodConf):
    name: str = "cocoop"
    display_name: str = "CoCoOp"
    learner: CoCoOpLearnerConf = field(default_factory=CoCoOpLearnerConf)
    optim: OptimConf = field(
        default_factory=lambda: OptimConf(epochs=10, reference_batch_size=1, lr_scaling=LrScaling.sqrt)
    )
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=1))


@dataclass
class KgCoOpMethodConf(MethodConf):
    name: str = "kgcoop"
    display_name: str = "KgCoOp"
    learner: KgCoOpLearnerConf = field(default_factory=KgCoOpLearnerConf)
    optim: OptimConf = field(default_factory=lambda: OptimConf(epochs=100, reference_batch_size=128))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=128))


@dataclass
class LinearProbeMethodConf(MethodConf):
    name: str = "linear_probe"
    display_name: str = "Linear probe"
    learner: LinearProbeLearnerConf = field(default_factory=LinearProbeLearnerConf)
    optim: OptimConf = field(default_factory=lambda: OptimConf(epochs=0))  # closed-form fit, no epochs
    # The reference (CoOp lpclip/) encodes every split with the test transform.
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(augment=Augment.none))


@dataclass
class TipAdapterMethodConf(MethodConf):
    name: str = "tip_adapter"
    display_name: str = "Tip-Adapter"
    learner: TipAdapterLearnerConf = field(default_factory=TipAdapterLearnerConf)
    optim: OptimConf = field(default_factory=lambda: OptimConf(epochs=0))
    # One cached view per image; the reference's 10 averaged crops: augment=coop train_cache=on train_views=10.
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(augment=Augment.none))


@dataclass
class TipAdapterFMethodConf(MethodConf):
    """The reference's training: AdamW lr 1e-3 eps 1e-4 (conf/method/tip_adapter_f.yaml picks adamw), cosine per
    iteration, 20 epochs, batch 256."""

    name: str = "tip_adapter_f"
    display_name: str = "Tip-Adapter-F"
    learner: TipAdapterFLearnerConf = field(default_factory=TipAdapterFLearnerConf)
    optim: OptimConf = field(default_factory=lambda: OptimConf(
        lr=1e-3, epochs=20, warmup_epochs=0, reference_batch_size=256, schedule_unit=ScheduleUnit.step))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=256, augment=Augment.none))


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
    eval_cache: bool = True  # keep test-image features on disk (paths.cache_dir) for the sweep's other jobs
    # In a multirun on several GPUs, each single-device job takes GPU (job number mod GPU count), so parallel
    # jobs (launcher=joblib) spread over the GPUs instead of all landing on GPU 0.
    assign_gpus: bool = True
    run_name: str = "${method.name}_${dataset.name}_${shots}shot_seed${seed}"


METHOD_SCHEMAS: dict[str, type[MethodConf]] = {
    "zeroshot": ZeroShotMethodConf,
    "coop": CoOpMethodConf,
    "cocoop": CoCoOpMethodConf,
    "kgcoop": KgCoOpMethodConf,
    "linear_probe": LinearProbeMethodConf,
    "tip_adapter": TipAdapterMethodConf,
    "tip_adapter_f": TipAdapterFMethodConf,
}

LOGGER_SCHEMAS: dict[str, type] = {
    "csv": CSVLoggerConf,
    "wandb": WandbLoggerConf,
    "tensorboard": TensorBoardLoggerConf,
    "mlflow": MLFlowLoggerConf,
}

OPTIMIZER_SCHEMAS: dict[str, type] = {"sgd": SGDConf, "adamw": AdamWConf}


# --------------------------------------------------------------------------- ProGrad (methods/prograd.py)
class ProGradInitSplit(str, Enum):
    words = "words"  # the reference: as many BPE tokens as the phrase has space-separated words are learned
    tokens = "tokens"  # every BPE token of the phrase is learned


@dataclass
class ProGradLearnerConf(CoOpLearnerConf):
    """ProGrad (Prompt-align, trainers/prograd.py): 16 slots, the init phrase in the last ones and zeros before;
    with reference_templates the dataset's ProGrad template (methods/prograd.py::PROGRAD_TEMPLATES) is both the
    zero-shot teacher's prompt and the init phrase; datasets it lacks use `templates` and `ctx_init`."""

    _target_: str = "promptlab.methods.ProGradPrompts"
    n_ctx: int = 16
    ctx_init: str | None = "a photo of a"
    reference_templates: bool = True
    dataset: str = II("dataset.name")
    init_split: ProGradInitSplit = ProGradInitSplit.words
    prograd_lambda: float = 1.0  # LOSS.LAMBDA (README: 0.8 for 8/16 shots on Flowers, DTD, EuroSAT)
    temperature: float = 1.0  # LOSS.T
    templates: list[str] = II(PROMPT_TEMPLATES)
    descriptions: str | None = II("prompts.descriptions")
    descriptions_sha256: str | None = II(PROMPT_DESCRIPTIONS_SHA256)
    combine_templates: bool = II("prompts.combine")


@dataclass
class ProGradMethodConf(MethodConf):
    """The reference's configs are RN50 only (batch 32, SGD lr 0.002, warm-up + cosine, epochs by shots): the
    defaults here are CoOp's ViT-B/16 schedule, which is the same optimiser with epochs by shots."""

    name: str = "prograd"
    display_name: str = "ProGrad"
    learner: ProGradLearnerConf = field(default_factory=ProGradLearnerConf)


METHOD_SCHEMAS["prograd"] = ProGradMethodConf


# --------------------------------------------------------------------------- deep / multi-modal prompts
# Defaults: the reference's base-to-novel configs (ViT-B/16, batch 4, SGD, 1 warm-up epoch then cosine), read in
# muzairkhattak/multimodal-prompt-learning @69bce21 and muzairkhattak/PromptSRC @bb95c77 (docs/deep_prompts.md).
# Depths count the blocks that get fresh tokens, block 0 included (at most the tower's block count).
@dataclass
class DeepPromptOptions:
    """Options every deep prompt learner shares (reference quirks and memory)."""

    # The reference casts every inserted prompt with .half() whatever its precision: true rounds them to fp16
    # values the same way (deep text prompts and all image prompts; not the block-0 text context).
    fp16_prompts: bool = False
    checkpoint_blocks: bool = False  # recompute image-tower block activations in backward (memory for compute)


@dataclass
class VPTLearnerConf(DeepPromptOptions):
    """configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml: 8 vision tokens, depth 12; text fixed."""

    _target_: str = "promptlab.methods.vpt.VPTPrompts"
    n_ctx_vision: int = 8
    vision_depth: int = 12
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])  # the reference's, every dataset


@dataclass
class IVLPLearnerConf(DeepPromptOptions):
    """configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml: 2 + 2 tokens, depth 12 in both towers.

    keep_init_tail: the reference learns the first n_ctx tokens of ctx_init and keeps the rest of the phrase as
    fixed words ("a photo" learned, "of a" fixed for n_ctx=2); false: n_ctx must equal the phrase's tokens."""

    _target_: str = "promptlab.methods.ivlp.IVLPPrompts"
    n_ctx: int = 2
    ctx_init: str | None = "a photo of a"
    text_depth: int = 12
    n_ctx_vision: int = 2
    vision_depth: int = 12
    keep_init_tail: bool = True


@dataclass
class IVLPLanguageLearnerConf(IVLPLearnerConf):
    """configs/trainers/IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only.yaml: 4 text tokens, depth 12, no vision."""

    n_ctx: int = 4
    n_ctx_vision: int = 0
    vision_depth: int = 0


@dataclass
class MaPLeLearnerConf(DeepPromptOptions):
    """configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml: 2 tokens from "a photo of a", depth 9."""

    _target_: str = "promptlab.methods.maple.MaPLePrompts"
    n_ctx: int = 2
    ctx_init: str | None = "a photo of a"
    depth: int = 9
    keep_init_tail: bool = True


@dataclass
class PromptSRCLearnerConf(IVLPLearnerConf):
    """configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml: IVLP 4 + 4 tokens, depth 9 / 9, loss
    weights 25 (text L1) and 10 (image L1), the KL unweighted; GPA mean 15, std 1 over 20 epochs.
    teacher_templates null: the reference's 60 (the first 60 of CLIP's 80 ImageNet templates)."""

    _target_: str = "promptlab.methods.promptsrc.PromptSRCPrompts"
    n_ctx: int = 4
    text_depth: int = 9
    n_ctx_vision: int = 4
    vision_depth: int = 9
    text_loss_weight: float = 25.0
    image_loss_weight: float = 10.0
    logit_loss_weight: float = 1.0
    gpa: bool = True
    gpa_mean: float = 15.0
    gpa_std: float = 1.0
    teacher_templates: list[str] | None = None


def _deep_optim(lr: float, epochs: int) -> OptimConf:
    return OptimConf(lr=lr, epochs=epochs, reference_batch_size=4)


@dataclass
class VPTMethodConf(MethodConf):
    name: str = "vpt"
    display_name: str = "VPT"
    learner: VPTLearnerConf = field(default_factory=VPTLearnerConf)
    optim: OptimConf = field(default_factory=lambda: _deep_optim(0.0025, 5))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=4))


@dataclass
class IVLPMethodConf(MethodConf):
    name: str = "ivlp"
    display_name: str = "IVLP"
    learner: IVLPLearnerConf = field(default_factory=IVLPLearnerConf)
    optim: OptimConf = field(default_factory=lambda: _deep_optim(0.0035, 5))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=4))


@dataclass
class IVLPLanguageMethodConf(MethodConf):
    name: str = "ivlp_language"
    display_name: str = "Deep language prompts"
    learner: IVLPLanguageLearnerConf = field(default_factory=IVLPLanguageLearnerConf)
    optim: OptimConf = field(default_factory=lambda: _deep_optim(0.0025, 5))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=4))


@dataclass
class MaPLeMethodConf(MethodConf):
    name: str = "maple"
    display_name: str = "MaPLe"
    learner: MaPLeLearnerConf = field(default_factory=MaPLeLearnerConf)
    optim: OptimConf = field(default_factory=lambda: _deep_optim(0.0035, 5))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=4))


@dataclass
class PromptSRCMethodConf(MethodConf):
    name: str = "promptsrc"
    display_name: str = "PromptSRC"
    learner: PromptSRCLearnerConf = field(default_factory=PromptSRCLearnerConf)
    optim: OptimConf = field(default_factory=lambda: _deep_optim(0.0025, 20))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=4))


METHOD_SCHEMAS.update({
    "vpt": VPTMethodConf,
    "ivlp": IVLPMethodConf,
    "ivlp_language": IVLPLanguageMethodConf,
    "maple": MaPLeMethodConf,
    "promptsrc": PromptSRCMethodConf,
})
