"""Two-stage LoRA fine-tuning of the MLLM embedder.

Stage 1 (alignment): bidirectional InfoNCE between image and caption embeddings (two images of one identity are
never negatives), optionally plus an identity loss (SupCon / batch-hard triplet over P identities × K images)
on the image embeddings and a word–patch alignment loss on token states (with trainable token embeddings); captions can be noise-aware masked (NAM), RDA-reorganised and mixed with LLM rewrites
(BSS). Stage 2 (instruction following): start from the stage-1 adapter, InfoNCE between the composed embedding
(reference image + modification) and the target image, mixing in a fraction of stage-1 batches.

Runs under `accelerate` (device, mixed precision, `accelerate launch` for several GPUs), optionally on a 4-bit
NF4 base (QLoRA) with an 8-bit AdamW. Checkpoints hold adapter, optimizer, scheduler, temperature, RNG and NAM
state; the data order is a pure function of (seed, epoch, step), so a resumed run continues exactly.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from finetune import augment, nam
from finetune.losses import (IDENTITY_LOSSES, Temperature, caption_word_positives, contrastive_loss, identity_loss,
                             word_grounding_loss, word_patch_loss)
from mllm_embed import load_embedder
from mllm_embed.config import PROMPT_STYLES
from mllm_embed.embedder import IMAGE, TEXT, load_image
from mllm_embed.errors import LineupError
from mllm_embed.files import atomic_output

logger = logging.getLogger(__name__)

STAGES = ("stage1", "stage2")
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
@dataclass
class TrainConfig:
    """One fine-tuning run (stage 1 or stage 2). Paths: base model, dataset folder, output folder."""

    base_model: str = field(metadata={"help": "base MLLM: local folder or hub name"})
    data: str = field(metadata={"help": "dataset folder (a generated world or a real dataset)"})
    output_dir: str = field(metadata={"help": "where the adapter, checkpoints and metrics.jsonl go"})
    data_format: str = field(default="auto", metadata={"help": "dataset format for finetune.data.loaders"})
    init_adapter: str | None = field(default=None, metadata={"help": "adapter to start from (stage 2: stage 1's)"})
    epochs: int = field(default=2, metadata={"help": "passes over the training data"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0: no limit)"})
    ids_per_batch: int = field(default=8, metadata={"help": "P: identities per stage-1 batch"})
    images_per_id: int = field(default=2, metadata={"help": "K: images per identity in a stage-1 batch"})
    hard_negatives: bool = field(default=False, metadata={
        "help": "stage-1 batches pair each identity with a one-edit neighbour (the world's composed triplets: "
                "people who differ in one attribute) as in-batch hard negatives"})
    batch_size: int = field(default=16, metadata={"help": "triplets per stage-2 batch"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=5, metadata={"help": "linear warmup steps"})
    scheduler: str = field(default="cosine", metadata={"help": "transformers scheduler name (cosine, linear, constant_with_warmup)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0: off)"})
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
    # Measured on the demo world (40 epochs, val): learnable from 0.05 → t2i mAP 20.3; fixed 0.1 → t2i mAP 22.4 and
    # i2i mAP 41.2; fixed 0.2 → 25.1 / 22.1. With 16-sample batches a fixed, warmer temperature trains better.
    temperature: float = field(default=0.1, metadata={"help": "InfoNCE temperature (initial value if learnable)"})
    learn_temperature: bool = field(default=False, metadata={"help": "learn the InfoNCE temperature"})
    identity_loss: str | None = field(default="supcon", metadata={"help": "identity loss on image embeddings: supcon, triplet or None"})
    identity_weight: float = field(default=0.5, metadata={"help": "weight of the identity loss"})
    identity_temperature: float = field(default=0.1, metadata={"help": "SupCon temperature"})
    triplet_margin: float = field(default=0.3, metadata={"help": "batch-hard triplet margin"})
    # Measured on the test fixture (stage 2, 4 epochs over the triplets, train split): mix 0.25 → text→image mAP
    # 18.2 → 13.7 (forgets), composed R@10 14.5 → 33.6; 0.5 → 15.3 / 32.9; 0.67 → 21.8 / 44.1 (no forgetting).
    stage1_mix: float = field(default=0.67, metadata={
        "help": "stage 2: fraction of steps that are stage-1 batches (0.67: two per triplet batch)"})
    word_patch_weight: float = field(default=0.0, metadata={
        "help": "weight of the word–patch alignment loss on layer nam_layer's token states: trains the states NAM "
                "compares so unsupported words stand out"})
    word_patch_level: str = field(default="caption", metadata={
        "help": "caption: a caption scores an image by its words' mean best-patch cosine (FILIP), InfoNCE over "
                "captions/images; word: every word ranks the batch's images by its best patch, the positives being "
                "images whose person's captions use the word (what NAM reads)"})
    mask_mode: str = field(default="none", metadata={"help": "caption masking: none, uniform or nam"})
    mask_rate: float = field(default=0.15, metadata={"help": "average fraction of caption words masked"})
    nam_layer: int = field(default=-1, metadata={"help": "hidden layer whose token/patch states NAM compares"})
    nam_joint: bool = field(default=True, metadata={"help": "NAM: caption and image in one sequence (else two passes)"})
    noisy_caption_prob: float = field(default=0.0, metadata={"help": "chance to train on an image's noisy caption (world data)"})
    rda_prob: float = field(default=0.0, metadata={"help": "chance to RDA-reorganise a caption"})
    rewrites: str | None = field(default=None, metadata={"help": "JSON {caption: [rewrites]} from LLM-DA (after TFF)"})
    bss_ratio: float = field(default=0.5, metadata={"help": "BSS: chance to train on a rewrite when one exists"})
    prompt_style: str | None = field(default=None, metadata={
        "help": f"embedding prompt preset, one of {sorted(PROMPT_STYLES)} (None: the base's defaults, or the "
                "init adapter's prompts)"})
    merge_init: bool = field(default=False, metadata={
        "help": "stage 2, LamRA-style: merge init_adapter into the base weights and train a new LoRA on top "
                "(default: continue training init_adapter)"})
    precision: str = field(default="no", metadata={"help": "mixed precision for accelerate: no, bf16, fp16"})
    quantization: str | None = field(default=None, metadata={"help": "base quantization: None, 4bit (QLoRA) or 8bit"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw or adamw8bit (bitsandbytes)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for memory"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0: only at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept on disk"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in output_dir"})
    eval_split: str = field(default="val", metadata={"help": "split evaluated after each epoch ('' to skip)"})
    eval_batch_size: int = field(default=32, metadata={"help": "batch size for evaluation encoding"})
    seed: int = field(default=0, metadata={"help": "seed of data order, caption choices and LoRA init"})

    def __post_init__(self):
        self.lora_target_modules = tuple(self.lora_target_modules)
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("max_steps", self.max_steps >= 0, "must be >= 0"),
            ("ids_per_batch", self.ids_per_batch >= 2, "must be >= 2 (in-batch negatives)"),
            ("images_per_id", self.images_per_id >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 2, "must be >= 2"),
            ("lr", self.lr > 0, "must be > 0"),
            ("lora_r", self.lora_r >= 1, "must be >= 1"),
            ("temperature", self.temperature > 0, "must be > 0"),
            ("identity_loss", self.identity_loss in (None, *IDENTITY_LOSSES), f"must be None or one of {IDENTITY_LOSSES}"),
            ("lora_vision", self.lora_vision in ("none", "projector", "all", "full"),
             "must be none, projector, all or full"),
            ("word_patch_level", self.word_patch_level in ("caption", "word"), "must be caption or word"),
            ("token_embeddings", self.token_embeddings in ("frozen", "lora", "full"), "must be frozen, lora or full"),
            ("stage1_mix", 0 <= self.stage1_mix < 1, "must be in [0, 1)"),
            ("word_patch_weight", self.word_patch_weight >= 0, "must be >= 0"),
            ("mask_mode", self.mask_mode in nam.MASK_MODES, f"must be one of {nam.MASK_MODES}"),
            ("mask_rate", 0 <= self.mask_rate < 1, "must be in [0, 1)"),
            ("noisy_caption_prob", 0 <= self.noisy_caption_prob <= 1, "must be in [0, 1]"),
            ("rda_prob", 0 <= self.rda_prob <= 1, "must be in [0, 1]"),
            ("bss_ratio", 0 <= self.bss_ratio <= 1, "must be in [0, 1]"),
            ("prompt_style", self.prompt_style in (None, *PROMPT_STYLES), f"must be None or one of {sorted(PROMPT_STYLES)}"),
            ("merge_init", not self.merge_init or self.init_adapter, "needs init_adapter (the adapter to merge)"),
            ("merge_init", not (self.merge_init and self.quantization),
             "cannot merge into a quantized base (the merge would round the LoRA into 4/8-bit weights)"),
            ("precision", self.precision in ("no", "bf16", "fp16"), "must be no, bf16 or fp16"),
            ("quantization", self.quantization in (None, "4bit", "8bit"), "must be None, 4bit or 8bit"),
            ("optimizer", self.optimizer in ("adamw", "adamw8bit"), "must be adamw or adamw8bit"),
            ("save_every", self.save_every >= 0, "must be >= 0"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name} {why} (got {getattr(self, name)!r})")

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LineupError(f"training config: unknown field(s) {unknown}; valid: {sorted(known)}")
        return cls(**data)


Callback = Callable[[dict], None] | None


# ------------------------------------------------------------------------------------------------ data


def _records(cfg: TrainConfig, split: str) -> list[dict]:
    from finetune.data.loaders import load_person_dataset

    rows = [r for r in load_person_dataset(cfg.data, fmt=cfg.data_format).to_list() if r["split"] == split]
    for r in rows:
        r["attributes"] = json.loads(r["attributes"]) if r.get("attributes") else None
    _attach_noisy_captions(Path(cfg.data), rows)
    return rows


def _attach_noisy_captions(data_dir: Path, rows: list[dict]) -> None:
    """World data only: the noisy caption and its wrong-word indices (ground truth for NAM)."""
    path = data_dir / "annotations.jsonl"
    noisy = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            a = json.loads(line)
            if a.get("noisy_caption"):
                noisy[str((data_dir / a["image"]).resolve())] = (a["noisy_caption"], a.get("noisy_words") or [])
    for r in rows:
        r["noisy_caption"], r["noisy_words"] = noisy.get(str(Path(r["image"]).resolve()), (None, []))


def _composed_benchmark(cfg: TrainConfig) -> bool:
    from finetune.data.loaders import composed_benchmark_format

    return cfg.data_format in ("cirr", "fashioniq") or (cfg.data_format == "auto" and
                                                         composed_benchmark_format(cfg.data) is not None)


def _triplets(cfg: TrainConfig, split: str, required: bool) -> list[dict]:
    from finetune.data.loaders import load_triplets

    try:
        rows = [r for r in load_triplets(cfg.data, fmt=cfg.data_format).to_list() if r["split"] == split]
    except (LineupError, FileNotFoundError):
        if required:
            raise
        return []
    if required and not rows:
        raise LineupError(f"{cfg.data}: no {split} triplets for stage 2; use a dataset with composed triplets")
    return rows


class _Data:
    """Training records and the deterministic per-epoch batch plans."""

    def __init__(self, stage: str, cfg: TrainConfig):
        self.cfg = cfg
        # a composed benchmark (CIRR, FashionIQ) has triplets only: stage 2 trains on them without stage-1 replay
        triplets_only = stage == "stage2" and _composed_benchmark(cfg)
        self.records = [] if triplets_only else _records(cfg, "train")
        if not self.records and not triplets_only:
            raise LineupError(f"{cfg.data}: no train split records; check the dataset's split column")
        self.by_id: dict[int, list[int]] = {}
        for i, r in enumerate(self.records):
            self.by_id.setdefault(int(r["person_id"]), []).append(i)
        if self.records and len(self.by_id) < cfg.ids_per_batch:
            raise LineupError(f"{cfg.data}: {len(self.by_id)} train identities < ids_per_batch={cfg.ids_per_batch}; "
                              "lower ids_per_batch")
        self.triplets = _triplets(cfg, "train", required=stage == "stage2")
        self.neighbours: dict[int, set[int]] = {}
        for t in self.triplets:
            a, b = int(t["reference_id"]), int(t["target_id"])
            if a in self.by_id and b in self.by_id and a != b:
                self.neighbours.setdefault(a, set()).add(b)
                self.neighbours.setdefault(b, set()).add(a)
        self.rewrites: dict[str, list[str]] = {}
        if cfg.rewrites:
            try:
                self.rewrites = json.loads(Path(cfg.rewrites).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise LineupError(f"{cfg.rewrites}: cannot read rewrites JSON ({exc}); expected "
                                  "{caption: [rewrite, ...]}") from exc
        # every caption of a person: the words the word-level word–patch loss counts as shown in their images
        self.person_text = {pid: " ".join(c for i in idx for c in self.records[i]["captions"])
                            for pid, idx in self.by_id.items()}
        self.image = functools.lru_cache(maxsize=4096)(load_image)  # decoded once, reused every epoch
        self.stage = stage
        self.batches_per_epoch = len(self.plan(0))

    def _stage1_batches(self, rng: np.random.Generator) -> list[tuple]:
        ids = sorted(self.by_id)
        order = [ids[i] for i in rng.permutation(len(ids))]
        if self.cfg.hard_negatives:
            order = self._pair_neighbours(order, rng)
        p, k = self.cfg.ids_per_batch, self.cfg.images_per_id
        batches = []
        for start in range(0, len(order) - p + 1, p):
            idx = []
            for pid in order[start:start + p]:
                pool = self.by_id[pid]
                idx += [pool[j] for j in rng.choice(len(pool), size=k, replace=len(pool) < k)]
            batches.append(("stage1", tuple(idx)))
        return batches

    def _pair_neighbours(self, order: list[int], rng: np.random.Generator) -> list[int]:
        """`order` with an unplaced one-edit neighbour right after each identity that has one, so most batches
        hold pairs of people told apart by a single attribute."""
        placed: set[int] = set()
        out: list[int] = []
        for pid in order:
            if pid in placed:
                continue
            out.append(pid)
            placed.add(pid)
            free = sorted(self.neighbours.get(pid, set()) - placed)
            if free:
                mate = free[int(rng.integers(len(free)))]
                out.append(mate)
                placed.add(mate)
        return out

    def plan(self, epoch: int) -> list[tuple]:
        """The epoch's batches as (kind, record/triplet indices): a pure function of (seed, epoch)."""
        rng = np.random.default_rng([self.cfg.seed, 1, epoch])
        if self.stage == "stage1":
            return self._stage1_batches(rng)
        perm = rng.permutation(len(self.triplets))
        b = self.cfg.batch_size
        batches = [("stage2", tuple(perm[s:s + b].tolist())) for s in range(0, len(perm) - 1, b) if len(perm[s:s + b]) > 1]
        n1 = round(len(batches) * self.cfg.stage1_mix / (1 - self.cfg.stage1_mix)) if self.records else 0
        if n1:
            pool = self._stage1_batches(rng)
            extra = iter(pool[i % len(pool)] for i in range(n1))
            is_stage1 = np.zeros(len(batches) + n1, dtype=bool)
            is_stage1[rng.choice(len(is_stage1), size=n1, replace=False)] = True
            triplet_batches = iter(batches)
            batches = [next(extra) if s1 else next(triplet_batches) for s1 in is_stage1]
        return batches

    def caption(self, index: int, rng: np.random.Generator, masker: nam.NoiseAwareMasker) -> str:
        """One training caption for record `index`: clean or noisy, maybe a rewrite (BSS), RDA, masked."""
        r, cfg = self.records[index], self.cfg
        if r["noisy_caption"] and rng.random() < cfg.noisy_caption_prob:
            text, key = r["noisy_caption"], (index, -1)
        else:
            c = int(rng.integers(len(r["captions"])))
            text, key = r["captions"][c], (index, c)
        original = text
        text = augment.balanced_choice(text, self.rewrites.get(text, []), cfg.bss_ratio, rng)
        if cfg.rda_prob and rng.random() < cfg.rda_prob:
            text = augment.rda(text, r["attributes"], rng)
        return masker(text, rng, key if text == original else None)

    def noise_pairs(self) -> tuple[list[tuple], list[tuple]]:
        """(keys, (image, caption) pairs) of every caption the sampler can draw, for NAM estimation."""
        keys, pairs = [], []
        for i, r in enumerate(self.records):
            texts = [(c, t) for c, t in enumerate(r["captions"])]
            if r["noisy_caption"] and self.cfg.noisy_caption_prob > 0:
                texts.append((-1, r["noisy_caption"]))
            for c, t in texts:
                keys.append((i, c))
                pairs.append((r["image"], t))
        return keys, pairs


# ------------------------------------------------------------------------------------------- evaluation


def evaluate(embedder, records: list[dict], triplets: list[dict] | None = None, batch_size: int = 32) -> dict:
    """The per-epoch evaluation: the protocols of ``retrieval.evaluate`` on one gallery (the records' images,
    encoded once), flattened into the keys training logs (metrics.jsonl), the benchmarks and the tests read:

    - ``t2i_R1``, ``t2i_mAP``: text→image with every caption of every image as a query (``evaluate_t2i``).
    - ``i2i_R1``, ``i2i_mAP``: image→image, same-person same-camera items excluded (``evaluate_i2i``; without
      camera ids only the query itself).
    - ``comp_R@1``, ``comp_R@5``, ``comp_R@10``: composed retrieval, exact target — the triplet's own target
      image among the top K images, reference excluded (``evaluate_composed``'s ``exact_R@K``).
    - ``comp_id_R1``, ``comp_id_mAP``: composed retrieval, identity level — any image of the target person
      counts (``evaluate_composed``'s ``R@1`` and ``mAP``).
    Composed keys appear only for triplets whose target person (``comp_id_*``) / image (``comp_R@K``) is among
    the records.
    """
    from retrieval.evaluate import encode_gallery, evaluate_composed, evaluate_i2i, evaluate_t2i

    img = encode_gallery(embedder, records, batch_size)
    kw = {"image_vecs": img, "batch_size": batch_size}
    out = {f"t2i_{k}": v for k, v in evaluate_t2i(embedder, records, **kw).items() if k in ("R1", "mAP")}
    out |= {f"i2i_{k}": v for k, v in evaluate_i2i(embedder, records, **kw).items() if k in ("R1", "mAP")}
    people = {r["person_id"] for r in records}
    if any(t["target_id"] in people for t in triplets or []):
        comp = evaluate_composed(embedder, records, triplets, **kw)
        out |= {f"comp_{k[len('exact_'):]}": v for k, v in comp.items() if k.startswith("exact_R@")}
        out |= {"comp_id_R1": comp["R@1"], "comp_id_mAP": comp["mAP"]}
    return {k: float(v) for k, v in out.items()}


def evaluate_split(embedder, data: str | Path, split: str = "val", data_format: str = "auto",
                   batch_size: int = 32) -> dict:
    """`evaluate` on one split of a dataset folder."""
    cfg = TrainConfig(base_model="", data=str(data), output_dir="", data_format=data_format)
    records = _records(cfg, split)
    if not records:
        raise LineupError(f"{data}: no records in split {split!r}")
    return evaluate(embedder, records, _triplets(cfg, split, required=False), batch_size)


# ------------------------------------------------------------------------------------------------ model


def _lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    # the language model is `language_model` (LLaVA family, Qwen2-VL) or `text_model` (Idefics3 / SmolVLM)
    pattern = rf".*(language_model|text_model).*\.({'|'.join(cfg.lora_target_modules)})"
    if cfg.token_embeddings == "lora":
        pattern += r"|.*(language_model|text_model).*\.embed_tokens"
    if cfg.lora_vision in ("projector", "all"):  # LLaVA: multi_modal_projector; Qwen2-VL: merger; Idefics3: connector
        pattern += (r"|.*multi_modal_projector\.linear_\d+|.*visual\.merger\.mlp\.[02]"
                    r"|.*connector\.modality_projection\.proj")
    if cfg.lora_vision == "all":  # CLIP/SigLIP towers (LLaVA, Idefics3) and Qwen2-VL / Qwen2.5-VL visual blocks
        pattern += (r"|.*(vision_tower|vision_model).*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
                    r"|.*visual\.blocks.*\.(qkv|proj|fc1|fc2|gate_proj|up_proj|down_proj)")
    full = (["embed_tokens"] if cfg.token_embeddings == "full" else []) + (
        ["vision_tower", "multi_modal_projector", "visual", "vision_model", "connector"]
        if cfg.lora_vision == "full" else [])
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=pattern,
                      modules_to_save=full or None)


def _build_embedder(cfg: TrainConfig, device):
    torch.manual_seed(cfg.seed)
    embedder = load_embedder(cfg.base_model, adapter=cfg.init_adapter, device=str(device),
                             quantization=cfg.quantization)
    if cfg.prompt_style:
        embedder.config = embedder.config.with_style(cfg.prompt_style)
    if cfg.merge_init:
        from mllm_embed.merge import merge_loaded_adapter

        merge_loaded_adapter(embedder)
    if cfg.init_adapter is None or cfg.merge_init:
        embedder.add_adapter(_lora_config(cfg))
    else:  # load_embedder opens adapters for inference: make the LoRA weights trainable again
        for name, p in embedder.model.named_parameters():
            p.requires_grad_("lora_" in name)
    if cfg.gradient_checkpointing:
        embedder.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    embedder.model.train()
    return embedder


def _optimizer(cfg: TrainConfig, params: list):
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise LineupError("optimizer=adamw8bit needs bitsandbytes: pip install bitsandbytes") from exc
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# ---------------------------------------------------------------------------------------- checkpoints


def _checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if (p / STATE_FILE).exists() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _save_checkpoint(out: Path, step: int, embedder, state: dict, keep: int) -> None:
    ckpt = out / f"checkpoint-{step}"
    embedder.save_adapter(ckpt)
    with atomic_output(ckpt / STATE_FILE, "checkpoint") as tmp:  # written last and whole: it marks a checkpoint done
        torch.save(state, tmp)
    for old in _checkpoints(out)[:-keep] if keep > 0 else []:
        for f in sorted(old.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        old.rmdir()


def _damaged(ckpt: Path, what: str, exc: BaseException) -> LineupError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    return LineupError(f"{ckpt}: {what} cannot be loaded ({type(exc).__name__}: {first}); delete that checkpoint "
                       "folder to resume from an older one, or train without --resume")


def _load_state(ckpt: Path) -> dict:
    """The trainer state, unpickled with torch's weights-only loader: tensors, numbers, strings and containers,
    never objects or calls, so a planted checkpoint cannot run code."""
    try:
        state = torch.load(ckpt / STATE_FILE, weights_only=True, map_location="cpu")
    except Exception as exc:  # UnpicklingError for a forbidden global, EOFError/RuntimeError for a damaged file
        raise _damaged(ckpt, STATE_FILE, exc) from None
    fields_ = {"step", "optimizer", "scheduler", "temperature", "masker", "rng"}
    missing = fields_ - set(state) if isinstance(state, dict) else fields_
    if missing:
        raise _damaged(ckpt, STATE_FILE, ValueError(f"fields {sorted(missing)} missing"))
    return state


def _load_adapter_weights(embedder, ckpt: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(ckpt / "adapter_model.safetensors"))
    except (OSError, SafetensorError) as exc:
        raise _damaged(ckpt, "adapter_model.safetensors", exc) from None
    set_peft_model_state_dict(embedder.model, weights)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- train


def _loss(kind: str, idx: tuple, data: _Data, embedder, scale, cfg: TrainConfig, rng, masker) -> dict[str, torch.Tensor]:
    """The batch's weighted loss terms by name (their sum is optimised; each is logged)."""
    if kind == "stage1":
        records = [data.records[i] for i in idx]
        pids = torch.tensor([r["person_id"] for r in records], device=embedder.device)
        layer = cfg.nam_layer if cfg.word_patch_weight else None
        img_batch = embedder.image_batch([data.image(r["image"]) for r in records])
        captions = [data.caption(i, rng, masker) for i in idx]
        txt_batch = embedder.text_batch(captions)
        img, img_h = embedder.embed_with_states(img_batch, layer)
        txt, txt_h = embedder.embed_with_states(txt_batch, layer)
        terms = {"contrastive": contrastive_loss(img, txt, scale, pids)}
        if cfg.word_patch_weight:
            txt_mask = txt_batch["token_kinds"].to(embedder.device) == TEXT
            img_mask = img_batch["token_kinds"].to(embedder.device) == IMAGE
            if cfg.word_patch_level == "word":
                shown = [data.person_text[r["person_id"]] for r in records]
                positives = caption_word_positives(captions, txt_batch["word_ids"], shown, pids)
                wp = word_grounding_loss(txt_h, txt_mask, img_h, img_mask, positives, scale)
            else:
                wp = word_patch_loss(txt_h, txt_mask, img_h, img_mask, scale, pids)
            terms["word_patch"] = cfg.word_patch_weight * wp
        if cfg.identity_loss:
            terms["identity"] = cfg.identity_weight * identity_loss(cfg.identity_loss, img, pids,
                                                                    cfg.identity_temperature, cfg.triplet_margin)
        return terms
    trip = [data.triplets[i] for i in idx]
    target_pids = torch.tensor([t["target_id"] for t in trip], device=embedder.device)
    q = embedder.embed(embedder.composed_batch([(data.image(t["reference"]), t["modification"]) for t in trip]))
    tgt = embedder.embed(embedder.image_batch([data.image(t["target"]) for t in trip]))
    return {"composed": contrastive_loss(q, tgt, scale, target_pids)}


def _log(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def train(stage: str, cfg: TrainConfig, callback: Callback = None) -> Path:
    """Fine-tune one stage and return the adapter folder (`output_dir/adapter`).

    `callback(event)` gets {"event": "step", "step", "total_steps", "epoch", "loss", "terms" (the weighted loss terms
    by name), "lr", "samples_per_s"}
    after every optimizer step and {"event": "eval", "step", "epoch", **metrics} after each epoch's evaluation.
    """
    from accelerate import Accelerator
    from transformers import get_scheduler

    if stage not in STAGES:
        raise LineupError(f"stage={stage!r}: choose one of {list(STAGES)}")
    if stage == "stage2" and not cfg.init_adapter:
        logger.warning("stage 2 without init_adapter: starting from a fresh LoRA instead of the stage-1 adapter")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision=cfg.precision, cpu=not torch.cuda.is_available())
    data = _Data(stage, cfg)
    embedder = _build_embedder(cfg, accelerator.device)
    temperature = Temperature(cfg.temperature, cfg.learn_temperature).to(embedder.device)
    params = [p for p in embedder.model.parameters() if p.requires_grad] + list(temperature.parameters())
    optimizer = _optimizer(cfg, params)
    n_proc = accelerator.num_processes
    steps_per_epoch = data.batches_per_epoch // n_proc
    if steps_per_epoch < 1:
        raise LineupError(f"{cfg.data}: {data.batches_per_epoch} batches per epoch for {n_proc} processes; "
                          "use a smaller ids_per_batch/batch_size or fewer processes")
    total = steps_per_epoch * cfg.epochs
    total = min(total, cfg.max_steps) if cfg.max_steps else total
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total)
    optimizer = accelerator.prepare(optimizer)  # the scheduler counts our steps, not accelerate's
    masker = nam.NoiseAwareMasker(cfg.mask_rate, cfg.mask_mode)
    # composed benchmarks: no per-epoch person evaluation; `lineup eval --task composed` runs their protocol
    eval_records = _records(cfg, cfg.eval_split) if cfg.eval_split and not _composed_benchmark(cfg) else []
    eval_triplets = _triplets(cfg, cfg.eval_split, required=False) if eval_records else []

    step, metrics_path = 0, out / METRICS_FILE
    checkpoints = _checkpoints(out) if cfg.resume else []
    if checkpoints:
        ckpt = checkpoints[-1]
        state = _load_state(ckpt)
        _load_adapter_weights(embedder, ckpt)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        temperature.load_state_dict(state["temperature"])
        masker.load_state_dict(state["masker"])
        _set_rng_state(state["rng"])
        step = state["step"]
        if metrics_path.exists():  # drop what the killed run logged after its last checkpoint
            rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step))
        logger.info("resumed %s from %s (step %d)", stage, ckpt, step)
    elif metrics_path.exists():
        metrics_path.unlink()
    (out / "train_config.json").write_text(json.dumps({"stage": stage, **asdict(cfg)}, indent=2))

    def save(step: int) -> None:
        if accelerator.is_main_process:
            state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "temperature": temperature.state_dict(), "masker": masker.state_dict(), "rng": _rng_state()}
            _save_checkpoint(out, step, embedder, state, cfg.keep_checkpoints)
        accelerator.wait_for_everyone()

    start_epoch, skip = divmod(step, steps_per_epoch)
    busy, samples = 0.0, 0  # seconds spent in training steps (evaluation and NAM excluded), samples seen
    for epoch in range(start_epoch, cfg.epochs):
        if step >= total:
            break
        if cfg.mask_mode == "nam" and stage == "stage1" and not (epoch == start_epoch and skip):
            keys, pairs = data.noise_pairs()
            scores = nam.estimate_word_noise(embedder, pairs, cfg.nam_layer, cfg.nam_joint, batch_size=cfg.eval_batch_size)
            masker.update(keys, nam.calibrate([c for _, c in pairs], scores))
        plan = data.plan(epoch)
        for s in range(skip if epoch == start_epoch else 0, steps_per_epoch):
            if step >= total:
                break
            pos = s * n_proc + accelerator.process_index  # each process takes its own batch of the plan
            kind, idx = plan[pos]
            rng = np.random.default_rng([cfg.seed, 2, epoch, pos])
            t0 = time.perf_counter()
            with accelerator.autocast():
                terms = _loss(kind, idx, data, embedder, temperature(), cfg, rng, masker)
                loss = sum(terms.values())
            accelerator.backward(loss)
            if n_proc > 1:
                for p in params:
                    p.grad = accelerator.reduce(p.grad if p.grad is not None else torch.zeros_like(p), "mean")
            if cfg.max_grad_norm:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            samples += len(idx) * n_proc
            busy += time.perf_counter() - t0
            row = {"event": "step", "step": step, "total_steps": total, "epoch": epoch, "kind": kind,
                   "loss": float(loss.detach()), "terms": {k: float(v.detach()) for k, v in terms.items()},
                   "lr": scheduler.get_last_lr()[0],
                   "temperature": float(1.0 / temperature().detach()),
                   "samples_per_s": samples / max(busy, 1e-9)}
            if accelerator.is_main_process:
                _log(metrics_path, row)
                if callback:
                    callback(row)
            if (s == steps_per_epoch - 1 or step >= total) and eval_records and accelerator.is_main_process:
                metrics = evaluate(embedder, eval_records, eval_triplets, cfg.eval_batch_size)
                row = {"event": "eval", "step": step, "epoch": epoch, "split": cfg.eval_split, **metrics}
                _log(metrics_path, row)
                logger.info("epoch %d eval: %s", epoch, metrics)
                if callback:
                    callback(row)
            if cfg.save_every and step % cfg.save_every == 0:
                save(step)
    adapter = out / "adapter"
    if accelerator.is_main_process:
        embedder.save_adapter(adapter)
    accelerator.wait_for_everyone()
    return adapter
