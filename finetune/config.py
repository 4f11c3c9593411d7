"""Training configs as small nested frozen dataclasses, torch-free (the CLI builds `--help` from them).

A stage-1/2 run is a `TrainConfig` of six sections (model, batches, loss, augment, schedule, run); stage 0 and
vision pre-training have one section each (`Stage0Config`, `VisionPretrainConfig`), and `lineup bootstrap` runs
both (`BootstrapConfig`). Every field name is unique across a config's sections, so a field is one flag
(`lora_r` → `--lora-r`) and one key in a flat override; recipe files (`recipes/*.yaml`) nest them by section.

Each section validates itself in `__post_init__`; an invalid value raises a LineupError naming its flag. A
config is never changed after validation: `with_overrides` / `dataclasses.replace` build a new, validated one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mllm_embed.config import POOLINGS, PROMPT_STYLES
from mllm_embed.errors import LineupError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
MASK_MODES = ("nam", "uniform", "none")
IDENTITY_LOSSES = ("supcon", "triplet")
LORA_VISION = ("none", "projector", "all", "full")
TOKEN_EMBEDDINGS = ("frozen", "lora", "full")
# the fields that shape a new LoRA: ignored when training continues an existing adapter
LORA_SHAPE = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "token_embeddings", "lora_vision")


def flag(name: str) -> str:
    """The command-line flag of a config field."""
    return "--" + name.replace("_", "-")


def _check(obj, rules: list[tuple[str, bool, str]]) -> None:
    """Raise for the first failed rule (field, ok, requirement) as one line naming the field's flag."""
    for name, ok, why in rules:
        if not ok:
            raise LineupError(f"{flag(name)} {why} (got {getattr(obj, name)!r})")


def _defaults(cls) -> dict:
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory() for f in fields(cls)}


def _coerce(cls, values: dict) -> dict:
    """Lists from YAML / argparse become the tuples the tuple fields hold."""
    tuple_fields = {f.name for f in fields(cls) if isinstance(_defaults(cls).get(f.name), tuple)}
    return {k: tuple(v) if k in tuple_fields and isinstance(v, list) else v for k, v in values.items()}


@dataclass(frozen=True)
class ModelConfig:
    """The embedder trained: base, starting adapter, LoRA shape, what trains besides LoRA, prompts."""

    base_model: str = field(default="", metadata={"help": "base MLLM: local folder or hub name"})
    init_adapter: str | None = field(default=None, metadata={"help": "adapter to start from (stage 2: stage 1's)"})
    merge_init: bool = field(default=False, metadata={
        "help": "LamRA-style: merge init_adapter into the base weights and train a new LoRA on top "
                "(default: continue training init_adapter; the LoRA-shape flags then do not apply)"})
    prompt_style: str | None = field(default=None, metadata={
        "help": f"embedding prompt preset, one of {sorted(PROMPT_STYLES)} (None: the base's defaults, or the "
                "init adapter's prompts)"})
    pooling: str | None = field(default=None, metadata={
        "help": f"embedding pooling, one of {POOLINGS} (None: the base's default, last, or the init adapter's)"})
    quantization: str | None = field(default=None, metadata={"help": "base quantization: None, 4bit (QLoRA) or 8bit"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        metadata={"help": "module names inside the language model that get LoRA (vision side: lora_vision)"})
    token_embeddings: str = field(default="frozen", metadata={
        "help": "the language model's input token embeddings: frozen, lora, or full (trained and saved with the "
                "adapter; lets word vectors move into the image space)"})
    # Measured on the benchmark world (word-level word–patch loss, input layer): LoRA on the tiny vision tower caps
    # NAM's wrong-word AUC near 0.65 whatever the rank (64: 0.67) or length; training it in full gives 0.71.
    lora_vision: str = field(default="all", metadata={
        "help": "the vision side: none, projector (LoRA on the vision→language projector), all (LoRA on projector "
                "and vision tower) or full (projector and tower trained in full, saved with the adapter)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for memory"})

    def __post_init__(self):
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        _check(self, [
            ("lora_r", self.lora_r >= 1, "must be >= 1"),
            ("lora_alpha", self.lora_alpha >= 1, "must be >= 1"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "must be in [0, 1)"),
            ("lora_target_modules", bool(self.lora_target_modules), "must name at least one module"),
            ("token_embeddings", self.token_embeddings in TOKEN_EMBEDDINGS, f"must be one of {TOKEN_EMBEDDINGS}"),
            ("lora_vision", self.lora_vision in LORA_VISION, f"must be one of {LORA_VISION}"),
            ("prompt_style", self.prompt_style in (None, *PROMPT_STYLES),
             f"must be None or one of {sorted(PROMPT_STYLES)}"),
            ("pooling", self.pooling in (None, *POOLINGS), f"must be None or one of {POOLINGS}"),
            ("quantization", self.quantization in (None, "4bit", "8bit"), "must be None, 4bit or 8bit"),
            ("merge_init", not self.merge_init or self.init_adapter, "needs an init adapter (the one to merge)"),
            ("merge_init", not (self.merge_init and self.quantization),
             "cannot merge into a quantized base (the merge would round the LoRA into 4/8-bit weights)"),
        ])
        if self.init_adapter and not self.merge_init:
            default = _defaults(ModelConfig)
            ignored = [flag(n) for n in LORA_SHAPE if getattr(self, n) != default[n]]
            if ignored:
                raise LineupError(f"{', '.join(ignored)} would shape a new LoRA, but training continues the adapter "
                                  f"{self.init_adapter}: drop them, or add --merge-init to train a new LoRA on it")

    @property
    def new_lora(self) -> bool:
        """Whether training adds a fresh LoRA (else it continues init_adapter's)."""
        return self.init_adapter is None or self.merge_init


@dataclass(frozen=True)
class BatchConfig:
    """The training data and how batches are drawn from it."""

    data: str = field(default="", metadata={"help": "dataset folder (a generated world or a real dataset)"})
    data_format: str = field(default="auto", metadata={"help": "dataset format for finetune.data.loaders"})
    ids_per_batch: int = field(default=8, metadata={"help": "P: identities per stage-1 batch"})
    images_per_id: int = field(default=2, metadata={"help": "K: images per identity in a stage-1 batch"})
    hard_negatives: bool = field(default=False, metadata={
        "help": "stage-1 batches pair each identity with a one-edit neighbour (the world's composed triplets: "
                "people who differ in one attribute) as in-batch hard negatives"})
    batch_size: int = field(default=16, metadata={"help": "triplets per stage-2 batch"})
    reference_negatives: bool = field(default=False, metadata={
        "help": "stage 2: each query's reference image joins the candidates as a hard negative (the person the "
                "modification must move away from)"})
    # Measured on the test fixture (stage 2, 4 epochs over the triplets, train split): mix 0.25 → text→image mAP
    # 18.2 → 13.7 (forgets), composed R@10 14.5 → 33.6; 0.5 → 15.3 / 32.9; 0.67 → 21.8 / 44.1 (no forgetting).
    stage1_mix: float = field(default=0.67, metadata={
        "help": "stage 2: fraction of steps that are stage-1 batches (0.67: two per triplet batch)"})

    def __post_init__(self):
        _check(self, [
            ("ids_per_batch", self.ids_per_batch >= 2, "must be >= 2 (in-batch negatives)"),
            ("images_per_id", self.images_per_id >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 2, "must be >= 2"),
            ("stage1_mix", 0 <= self.stage1_mix < 1, "must be in [0, 1)"),
        ])


@dataclass(frozen=True)
class LossConfig:
    """The loss terms and their weights."""

    # Measured on the demo world (40 epochs, val): learnable from 0.05 → t2i mAP 20.3; fixed 0.1 → t2i mAP 22.4 and
    # i2i mAP 41.2; fixed 0.2 → 25.1 / 22.1. With 16-sample batches a fixed, warmer temperature trains better.
    temperature: float = field(default=0.1, metadata={"help": "InfoNCE temperature (initial value if learnable)"})
    learn_temperature: bool = field(default=False, metadata={"help": "learn the InfoNCE temperature"})
    identity_loss: str | None = field(default="supcon", metadata={
        "help": "identity loss on image embeddings: supcon, triplet or None"})
    identity_weight: float = field(default=0.5, metadata={"help": "weight of the identity loss"})
    identity_temperature: float = field(default=0.1, metadata={"help": "SupCon temperature"})
    triplet_margin: float = field(default=0.3, metadata={"help": "batch-hard triplet margin"})
    word_patch_weight: float = field(default=0.0, metadata={
        "help": "weight of the word–patch alignment loss on layer nam_layer's token states: trains the states NAM "
                "compares so unsupported words stand out"})
    word_patch_level: str = field(default="caption", metadata={
        "help": "caption: a caption scores an image by its words' mean best-patch cosine (FILIP), InfoNCE over "
                "captions/images; word: every word ranks the batch's images by its best patch, the positives being "
                "images whose person's captions use the word (what NAM reads)"})

    def __post_init__(self):
        if self.identity_loss in ("None", "none", ""):  # a flag or a YAML value spelling "no identity loss"
            object.__setattr__(self, "identity_loss", None)
        _check(self, [
            ("temperature", self.temperature > 0, "must be > 0"),
            ("identity_loss", self.identity_loss in (None, *IDENTITY_LOSSES),
             f"must be None or one of {IDENTITY_LOSSES}"),
            ("identity_weight", self.identity_weight >= 0, "must be >= 0"),
            ("identity_temperature", self.identity_temperature > 0, "must be > 0"),
            ("triplet_margin", self.triplet_margin >= 0, "must be >= 0"),
            ("word_patch_weight", self.word_patch_weight >= 0, "must be >= 0"),
            ("word_patch_level", self.word_patch_level in ("caption", "word"), "must be caption or word"),
        ])


@dataclass(frozen=True)
class AugmentConfig:
    """Caption augmentation: masking (NAM), noisy captions, RDA, LLM rewrites (BSS)."""

    mask_mode: str = field(default="none", metadata={"help": "caption masking: none, uniform or nam"})
    mask_rate: float = field(default=0.15, metadata={"help": "average fraction of caption words masked"})
    nam_layer: int = field(default=-1, metadata={
        "help": "hidden layer whose token/patch states NAM compares (and the word–patch loss trains)"})
    nam_joint: bool = field(default=True, metadata={"help": "NAM: caption and image in one sequence (else two passes)"})
    noisy_caption_prob: float = field(default=0.0, metadata={
        "help": "chance to train on an image's noisy caption (world data)"})
    rda_prob: float = field(default=0.0, metadata={"help": "chance to RDA-reorganise a caption"})
    rewrites: str | None = field(default=None, metadata={"help": "JSON {caption: [rewrites]} from LLM-DA (after TFF)"})
    bss_ratio: float = field(default=0.5, metadata={"help": "BSS: chance to train on a rewrite when one exists"})

    def __post_init__(self):
        _check(self, [
            ("mask_mode", self.mask_mode in MASK_MODES, f"must be one of {MASK_MODES}"),
            ("mask_rate", 0 <= self.mask_rate < 1, "must be in [0, 1)"),
            ("noisy_caption_prob", 0 <= self.noisy_caption_prob <= 1, "must be in [0, 1]"),
            ("rda_prob", 0 <= self.rda_prob <= 1, "must be in [0, 1]"),
            ("bss_ratio", 0 <= self.bss_ratio <= 1, "must be in [0, 1]"),
        ])


@dataclass(frozen=True)
class ScheduleConfig:
    """How long and how fast: epochs, steps, optimizer, learning-rate schedule, seed."""

    epochs: int = field(default=2, metadata={"help": "passes over the training data"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0: no limit)"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=5, metadata={"help": "linear warmup steps"})
    scheduler: str = field(default="cosine", metadata={
        "help": "transformers scheduler name (cosine, linear, constant_with_warmup)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0: off)"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw or adamw8bit (bitsandbytes)"})
    seed: int = field(default=0, metadata={"help": "seed of data order, caption choices and LoRA init"})

    def __post_init__(self):
        _check(self, [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("max_steps", self.max_steps >= 0, "must be >= 0"),
            ("lr", self.lr > 0, "must be > 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("scheduler", self.scheduler in ("cosine", "linear", "constant", "constant_with_warmup",
                                             "cosine_with_restarts", "polynomial"),
             "must be a transformers scheduler name: cosine, linear, constant_with_warmup, ..."),
            ("max_grad_norm", self.max_grad_norm >= 0, "must be >= 0"),
            ("optimizer", self.optimizer in ("adamw", "adamw8bit"), "must be adamw or adamw8bit"),
        ])


@dataclass(frozen=True)
class RunConfig:
    """Where the run goes and how it runs: output, precision, checkpoints, resume, evaluation."""

    output_dir: str = field(default="", metadata={"help": "where the adapter, checkpoints and metrics.jsonl go"})
    precision: str = field(default="no", metadata={"help": "mixed precision for accelerate: no, bf16, fp16"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0: only at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept on disk (0: all)"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in output_dir"})
    eval_split: str = field(default="val", metadata={"help": "split evaluated after each epoch ('' to skip)"})
    eval_batch_size: int = field(default=32, metadata={"help": "batch size for evaluation encoding"})

    def __post_init__(self):
        _check(self, [
            ("precision", self.precision in ("no", "bf16", "fp16"), "must be no, bf16 or fp16"),
            ("save_every", self.save_every >= 0, "must be >= 0"),
            ("keep_checkpoints", self.keep_checkpoints >= 0, "must be >= 0"),
            ("eval_batch_size", self.eval_batch_size >= 1, "must be >= 1"),
        ])


class _Nested:
    """Shared by the configs made of sections: flat field access by name, overrides, dict round trips."""

    @classmethod
    def sections(cls) -> dict[str, type]:
        return {f.name: f.type if isinstance(f.type, type) else _SECTION_TYPES[f.type] for f in fields(cls)}

    @classmethod
    def field_sections(cls) -> dict[str, str]:
        """Each field name → the section holding it."""
        return {f.name: section for section, kind in cls.sections().items() for f in fields(kind)}

    @classmethod
    def of(cls, **flat: Any):
        """A config from field names (unique across the sections); unnamed fields keep their defaults."""
        return cls._build({}, flat)

    @classmethod
    def _build(cls, nested: dict, flat: dict):
        where = cls.field_sections()
        unknown = sorted(set(flat) - set(where))
        if unknown:
            raise LineupError(f"{cls.__name__}: unknown field(s) {unknown}; valid: {sorted(where)}")
        parts = {name: dict(nested.get(name, {})) for name in cls.sections()}
        for key, value in flat.items():
            parts[where[key]][key] = value
        return cls(**{name: kind(**_coerce(kind, parts[name])) for name, kind in cls.sections().items()})

    def with_overrides(self, flat: dict):
        """A new, validated config with the named fields (flat names) replaced."""
        return type(self)._build(self.to_dict(), flat)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config"):
        """A config from {section: {field: value}} (a recipe file); an unknown key is one line naming it."""
        if not isinstance(data, dict):
            raise LineupError(f"{source}: expected a mapping of sections {sorted(cls.sections())}")
        for section, values in data.items():
            if section not in cls.sections():
                raise LineupError(f"{source}: unknown key {section!r}; valid sections: {sorted(cls.sections())}")
            valid = [f.name for f in fields(cls.sections()[section])]
            if not isinstance(values, dict):
                raise LineupError(f"{source}: {section!r} must be a mapping of {valid}")
            for key in values:
                if key not in valid:
                    raise LineupError(f"{source}: unknown key '{section}.{key}'; valid keys of {section}: {valid}")
        return cls._build(data, {})

    def to_dict(self) -> dict:
        return {name: {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(getattr(self, name)).items()}
                for name in self.sections()}


@dataclass(frozen=True)
class TrainConfig(_Nested):
    """One fine-tuning run (stage 1 or stage 2), in sections. `TrainConfig.of(base_model=..., data=...,
    output_dir=..., epochs=...)` builds one from field names; `cfg.schedule.epochs` reads one."""

    model: ModelConfig = field(default_factory=ModelConfig)
    batches: BatchConfig = field(default_factory=BatchConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_recipe(cls, path: str | Path, stage: str) -> TrainConfig:
        """A stage's recipe file; its optional `stage:` key must match."""
        data = load_recipe(path)
        wanted = data.pop("stage", stage)
        if wanted != stage:
            raise LineupError(f"{path} is a {wanted} recipe; pass it to the {wanted} training (the stage named in the file)")
        return cls.from_dict(data, source=str(path))


@dataclass(frozen=True)
class Stage0Config:
    """Stage-0 pre-training settings."""

    epochs: int = field(default=12, metadata={"help": "passes over the train pairs"})
    batch_size: int = field(default=16, metadata={"help": "pairs per optimizer step"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate (cosine decay, warmup)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=20, metadata={"help": "linear warmup steps"})
    captions_per_image: int = field(default=1, metadata={"help": "caption pairs per train image"})
    caption_weight: float = field(default=0.5, metadata={"help": "fraction of caption pairs kept per epoch"})
    questions_per_image: int = field(default=0, metadata={"help": "VQA pairs drawn per image per epoch (0: all)"})
    attributes: tuple[str, ...] = field(default=("gender", "hair_length", "hair_color", "upper_color", "lower_color"),
                                        metadata={"help": "VQA attributes to train on (empty: all)"})
    # Off by default: the tiny bases do not learn either judge within the CPU budget (a pure interaction of text
    # and image features, so no first-order gradient; measured 0.50 balanced val accuracy at 0.5/0.5 on the
    # fixture and the demo world, and a worse fixture VQA). 0.5 each adds about 20-30 % stage-0 time.
    match_pairs: float = field(default=0.0, metadata={
        "help": "text-image yes/no judgements (config.match_question) per train image per epoch: half its own "
                "caption (yes), half a caption of another identity (no; half of those hard) (0: none)"})
    same_pairs: float = field(default=0.0, metadata={
        "help": "same-person yes/no judgements (config.verify_question on two crops side by side) per train image "
                "per epoch: half another camera of the same identity, half another identity (half hard) (0: none)"})
    eval_questions: int = field(default=300, metadata={"help": "val VQA pairs scored after training (0: none)"})
    eval_judgements: int = field(default=100, metadata={
        "help": "balanced val pairs per judge (match, same person) scored after training (0: none)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0: off)"})
    train_vision: bool = field(default=True, metadata={
        "help": "train the vision tower too (off once `finetune.vision_pretrain` has taught it to see: the "
                "projector and LM learn to read it, and each step costs about half)"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0: only at the end)"})
    resume: bool = field(default=True, metadata={"help": "continue from the newest stage-0 checkpoint"})
    seed: int = field(default=0, metadata={"help": "shuffling seed"})

    def __post_init__(self):
        object.__setattr__(self, "attributes", tuple(self.attributes))
        _check(self, [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("captions_per_image", self.captions_per_image >= 0, "must be >= 0"),
            ("caption_weight", 0 <= self.caption_weight <= 1, "must be in [0, 1]"),
            ("questions_per_image", self.questions_per_image >= 0, "must be >= 0"),
            ("match_pairs", self.match_pairs >= 0, "must be >= 0"),
            ("same_pairs", self.same_pairs >= 0, "must be >= 0"),
            ("eval_questions", self.eval_questions >= 0, "must be >= 0"),
            ("eval_judgements", self.eval_judgements >= 0, "must be >= 0"),
            ("max_grad_norm", self.max_grad_norm >= 0, "must be >= 0"),
            ("save_every", self.save_every >= 0, "must be >= 0"),
        ])

    @classmethod
    def for_tests(cls) -> Stage0Config:
        """About a minute on one core for the `test`-size base and the 48-identity test world."""
        return BootstrapConfig.recipe("test").stage0


@dataclass(frozen=True)
class VisionPretrainConfig:
    """Vision pre-training settings."""

    steps: int = field(default=1500, metadata={"help": "optimizer steps per cycle"})
    cycles: int = field(default=3, metadata={
        "help": "warm restarts: each cycle runs its own warmup + cosine schedule with fresh attribute heads on the "
                "tower the previous cycle left (a from-scratch ViT learns colours in the first, shapes later)"})
    identities_per_batch: int = field(default=12, metadata={"help": "P: identities per batch"})
    images_per_identity: int = field(default=4, metadata={"help": "K: images of each identity per batch"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate (warmup, cosine decay)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=20, metadata={"help": "linear warmup steps"})
    identity_weight: float = field(default=1.0, metadata={"help": "weight of the SupCon identity loss"})
    temperature: float = field(default=0.1, metadata={"help": "SupCon temperature"})
    eval_images: int = field(default=800, metadata={"help": "held-out (val + test) images scored at the end"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0: only between cycles)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})

    def __post_init__(self):
        _check(self, [
            ("steps", self.steps >= 1, "must be >= 1"),
            ("cycles", self.cycles >= 1, "must be >= 1"),
            ("identities_per_batch", self.identities_per_batch >= 2, "must be >= 2 (SupCon negatives)"),
            ("images_per_identity", self.images_per_identity >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("identity_weight", self.identity_weight >= 0, "must be >= 0"),
            ("temperature", self.temperature > 0, "must be > 0"),
            ("eval_images", self.eval_images >= 0, "must be >= 0"),
            ("save_every", self.save_every >= 0, "must be >= 0"),
        ])

    @classmethod
    def for_tests(cls) -> VisionPretrainConfig:
        return BootstrapConfig.recipe("test").vision


@dataclass(frozen=True)
class AnswersConfig:
    """The base's answers adapter (`finetune.answers`): VQA-only LM training of a LoRA on the language model, with
    the vision tower and projector trained in full and saved with it."""

    answers_epochs: int = field(default=1, metadata={"help": "passes over the train split's images"})
    answers_questions_per_image: int = field(default=4, metadata={"help": "VQA pairs drawn per image per epoch"})
    answers_lr: float = field(default=5e-4, metadata={"help": "AdamW peak learning rate (warmup, cosine decay)"})
    answers_rank: int = field(default=16, metadata={"help": "LoRA rank on the language model (alpha: twice it)"})
    answers_eval_questions: int = field(default=300, metadata={
        "help": "val VQA pairs answered by the base and by the adapter after training (0: none)"})
    answers_save_every: int = field(default=200, metadata={"help": "checkpoint every N steps (0: only at the end)"})
    answers_seed: int = field(default=0, metadata={"help": "sampling seed"})
    # a beanie leaves a few pixels of hair at 128x64; the head view shows the head 2.5 times larger
    # (benchmarks/results/answers.json: hair colour and hat read from it against the whole crop)
    answers_head_attributes: tuple[str, ...] = field(
        default=("hair_color", "has_hat", "hat", "has_glasses", "glasses"), metadata={
            "help": "VQA attributes whose questions are asked about the image's head view "
                    "(mllm_embed.embedder.head_view), in training and whenever the adapter answers (empty: none)"})
    # glasses are a dozen pixels of the head view: one epoch's share of their pairs leaves the adapter at the
    # majority answer, three times as many read them (benchmarks/results/answers.json)
    answers_attribute_weights: dict[str, int] = field(
        default_factory=lambda: {"has_glasses": 3, "glasses": 3}, metadata={
            "help": "VQA attribute -> how many times each of its pairs is listed in its image's pairs, which the "
                    "epoch draws answers_questions_per_image from (absent: 1)"})

    def __post_init__(self):
        object.__setattr__(self, "answers_head_attributes", tuple(self.answers_head_attributes))
        _check(self, [
            ("answers_epochs", self.answers_epochs >= 1, "must be >= 1"),
            ("answers_questions_per_image", self.answers_questions_per_image >= 0, "must be >= 0 (0: all)"),
            ("answers_lr", self.answers_lr > 0, "must be > 0"),
            ("answers_rank", self.answers_rank >= 1, "must be >= 1"),
            ("answers_eval_questions", self.answers_eval_questions >= 0, "must be >= 0"),
            ("answers_save_every", self.answers_save_every >= 0, "must be >= 0"),
            ("answers_attribute_weights", isinstance(self.answers_attribute_weights, dict) and all(
                isinstance(w, int) and w >= 1 for w in self.answers_attribute_weights.values()),
             "must map attributes to whole numbers >= 1"),
        ])


@dataclass(frozen=True)
class CalibrationConfig:
    """How the finished base's answers are calibrated (`retrieval.judge.answer_confusion`)."""

    calibration_images: int = field(default=800, metadata={
        "help": "held-out (val + test) images whose answers to every bank question are compared with the truth"})
    calibration_seed: int = field(default=0, metadata={"help": "sampling seed of those images"})

    def __post_init__(self):
        _check(self, [("calibration_images", self.calibration_images >= 1, "must be >= 1")])


@dataclass(frozen=True)
class BootstrapConfig(_Nested):
    """`lineup bootstrap`: vision pre-training, stage 0, the answers adapter, then the answers' calibration
    (recipes/bootstrap*.yaml)."""

    vision: VisionPretrainConfig = field(default_factory=VisionPretrainConfig)
    stage0: Stage0Config = field(default_factory=Stage0Config)
    answers: AnswersConfig = field(default_factory=AnswersConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    @classmethod
    def recipe(cls, size: str) -> BootstrapConfig:
        """The settings a base size is built with: recipes/bootstrap-test.yaml for `test`, else bootstrap.yaml."""
        return cls.from_dict(load_recipe(RECIPES / ("bootstrap-test.yaml" if size == "test" else "bootstrap.yaml")),
                             source=f"bootstrap recipe for size {size}")


_SECTION_TYPES = {cls.__name__: cls for cls in (ModelConfig, BatchConfig, LossConfig, AugmentConfig, ScheduleConfig,
                                                RunConfig, Stage0Config, VisionPretrainConfig, AnswersConfig,
                                                CalibrationConfig)}


def load_recipe(path: str | Path) -> dict:
    """A recipe file's {section: {field: value}} (YAML or JSON); a missing or unreadable file is one line."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LineupError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise LineupError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LineupError(f"{path}: a recipe is a mapping of sections to fields")
    return data


def save_resolved(cfg: _Nested, path: Path, **extra: Any) -> None:
    """The config as the run used it (every field, defaults included), as YAML."""
    import yaml

    path.write_text(yaml.safe_dump({**extra, **cfg.to_dict()}, sort_keys=False, allow_unicode=True),
                    encoding="utf-8")
