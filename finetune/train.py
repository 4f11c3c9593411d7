"""Two-stage LoRA fine-tuning of the MLLM embedder.

Stage 1 (alignment): bidirectional InfoNCE between image and caption embeddings (two images of one identity are
never negatives), optionally plus an identity loss (SupCon / batch-hard triplet over P identities × K images)
on the image embeddings and a word–patch alignment loss on token states (with trainable token embeddings); captions
can be noise-aware masked (NAM), RDA-reorganised and mixed with LLM rewrites (BSS). Stage 2 (instruction
following): start from the stage-1 adapter, InfoNCE between the composed embedding (reference image +
modification) and the target image, mixing in a fraction of stage-1 batches.

Each stage is an objective (`Alignment`, `Composed`) run by the one loop in `finetune.loop` under `accelerate`
(device, mixed precision, `accelerate launch` for several GPUs), optionally on a 4-bit NF4 base (QLoRA) with an
8-bit AdamW. Checkpoints hold adapter, optimizer, scheduler, temperature, RNG and NAM state; the data order is a
pure function of (seed, epoch, step), so a resumed run continues exactly. The config (`finetune.config.TrainConfig`)
is saved as it was used beside the adapter (`resolved_config.yaml`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path

import numpy as np
import torch

from finetune import augment, nam
from finetune.config import TrainConfig, save_resolved
from finetune.data import PersonImage, Triplet, load_split, load_triplets
from finetune.loop import Callback, LoopSettings, accelerator_for, fit, load_tensors
from finetune.losses import (Temperature, caption_word_positives, contrastive_loss, identity_loss, word_grounding_loss,
                             word_patch_loss)
from mllm_embed import load_embedder
from mllm_embed.embedder import IMAGE, TEXT, load_image, train_mode
from mllm_embed.errors import LineupError

logger = logging.getLogger(__name__)

RESOLVED_FILE = "resolved_config.yaml"
# ------------------------------------------------------------------------------------------------ data


def _composed_benchmark(cfg: TrainConfig) -> bool:
    from finetune.data.loaders import composed_benchmark_format

    return cfg.data_format in ("cirr", "fashioniq") or (cfg.data_format == "auto" and
                                                         composed_benchmark_format(cfg.data) is not None)


def _triplets(data: str | Path, fmt: str, split: str, required: bool) -> list[Triplet]:
    """The split's triplets; without `required`, a dataset without triplets gives none."""
    try:
        rows = load_triplets(data, split, fmt)
    except (LineupError, FileNotFoundError):
        if required:
            raise
        return []
    if required and not rows:
        raise LineupError(f"{data}: no {split} triplets for stage 2; use a dataset with composed triplets")
    return rows


class _Data:
    """Training records and the deterministic per-epoch batch plans."""

    def __init__(self, stage: str, cfg: TrainConfig):
        self.cfg, self.aug, self.seed = cfg.batches, cfg.augment, cfg.schedule.seed
        cfg = cfg.batches
        # a composed benchmark (CIRR, FashionIQ) has triplets only: stage 2 trains on them without stage-1 replay
        triplets_only = stage == "stage2" and _composed_benchmark(cfg)
        self.records = [] if triplets_only else load_split(cfg.data, "train", cfg.data_format)
        if not self.records and not triplets_only:
            raise LineupError(f"{cfg.data}: no train split records; check the dataset's split column")
        self.by_id: dict[int, list[int]] = {}
        for i, r in enumerate(self.records):
            self.by_id.setdefault(r.person_id, []).append(i)
        if self.records and len(self.by_id) < cfg.ids_per_batch:
            raise LineupError(f"{cfg.data}: {len(self.by_id)} train identities < ids_per_batch={cfg.ids_per_batch}; "
                              "lower ids_per_batch")
        self.triplets = _triplets(cfg.data, cfg.data_format, "train", required=stage == "stage2")
        self.neighbours: dict[int, set[int]] = {}
        for t in self.triplets:
            a, b = t.reference_id, t.target_id
            if a in self.by_id and b in self.by_id and a != b:
                self.neighbours.setdefault(a, set()).add(b)
                self.neighbours.setdefault(b, set()).add(a)
        self.rewrites: dict[str, list[str]] = {}
        if self.aug.rewrites:
            try:
                self.rewrites = json.loads(Path(self.aug.rewrites).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise LineupError(f"{self.aug.rewrites}: cannot read rewrites JSON ({exc}); expected "
                                  "{caption: [rewrite, ...]}") from exc
        # every caption of a person: the words the word-level word–patch loss counts as shown in their images
        self.person_text = {pid: " ".join(c for i in idx for c in self.records[i].captions)
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
        rng = np.random.default_rng([self.seed, 1, epoch])
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
        r, cfg = self.records[index], self.aug
        if r.noisy_caption and rng.random() < cfg.noisy_caption_prob:
            text, key = r.noisy_caption, (index, -1)
        else:
            c = int(rng.integers(len(r.captions)))
            text, key = r.captions[c], (index, c)
        original = text
        text = augment.balanced_choice(text, self.rewrites.get(text, []), cfg.bss_ratio, rng)
        if cfg.rda_prob and rng.random() < cfg.rda_prob:
            text = augment.rda(text, r.attributes, rng)
        return masker(text, rng, key if text == original else None)

    def noise_pairs(self) -> tuple[list[tuple], list[tuple]]:
        """(keys, (image, caption) pairs) of every caption the sampler can draw, for NAM estimation."""
        keys, pairs = [], []
        for i, r in enumerate(self.records):
            texts = list(enumerate(r.captions))
            if r.noisy_caption and self.aug.noisy_caption_prob > 0:
                texts.append((-1, r.noisy_caption))
            for c, t in texts:
                keys.append((i, c))
                pairs.append((r.image, t))
        return keys, pairs


# ------------------------------------------------------------------------------------------- evaluation


def evaluate(embedder, records: list[PersonImage], triplets: list[Triplet] | None = None, batch_size: int = 32) -> dict:
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
    people = {r.person_id for r in records}
    if any(t.target_id in people for t in triplets or []):
        comp = evaluate_composed(embedder, records, triplets, **kw)
        out |= {f"comp_{k[len('exact_'):]}": v for k, v in comp.items() if k.startswith("exact_R@")}
        out |= {"comp_id_R1": comp["R@1"], "comp_id_mAP": comp["mAP"]}
    return {k: float(v) for k, v in out.items()}


def evaluate_split(embedder, data: str | Path, split: str = "val", data_format: str = "auto",
                   batch_size: int = 32) -> dict:
    """`evaluate` on one split of a dataset folder."""
    records = load_split(data, split, data_format, required=True)
    return evaluate(embedder, records, _triplets(data, data_format, split, required=False), batch_size)


# ------------------------------------------------------------------------------------------------ model


def _lora_config(model_cfg):
    """The LoRA of a new adapter (`cfg.model`, a `finetune.config.ModelConfig`)."""
    from peft import LoraConfig

    cfg = model_cfg
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
    m = cfg.model
    torch.manual_seed(cfg.schedule.seed)
    embedder = load_embedder(m.base_model, adapter=m.init_adapter, device=str(device), quantization=m.quantization)
    if m.prompt_style:
        embedder.config = embedder.config.with_style(m.prompt_style)
    if m.pooling:
        embedder.config = dataclasses.replace(embedder.config, pooling=m.pooling)
    if m.merge_init:
        from mllm_embed.merge import merge_loaded_adapter

        merge_loaded_adapter(embedder)
    if m.new_lora:
        embedder.add_adapter(_lora_config(m))
    else:  # load_embedder opens adapters for inference: make the LoRA weights trainable again
        for name, p in embedder.model.named_parameters():
            p.requires_grad_("lora_" in name)
    if m.gradient_checkpointing:
        embedder.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    train_mode(embedder.model)
    return embedder


def _optimizer(schedule, params: list):
    if schedule.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise LineupError("--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from exc
        return bnb.optim.AdamW8bit(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    return torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay)


def _load_adapter_weights(embedder, ckpt: Path) -> None:
    from peft import set_peft_model_state_dict

    load_tensors(ckpt, "adapter_model.safetensors", lambda weights: set_peft_model_state_dict(embedder.model, weights))


# ------------------------------------------------------------------------------------------ objectives


class Alignment:
    """Stage 1 as a `finetune.loop.Objective`: image–caption InfoNCE plus the identity and word–patch terms, on
    captions drawn (and NAM-masked) per step."""

    def __init__(self, stage: str, cfg: TrainConfig, device):
        self.cfg = cfg
        self.data = _Data(stage, cfg)
        self.embedder = _build_embedder(cfg, device)
        self.temperature = Temperature(cfg.loss.temperature, cfg.loss.learn_temperature).to(self.embedder.device)
        self.params = ([p for p in self.embedder.model.parameters() if p.requires_grad]
                       + list(self.temperature.parameters()))
        self.steps_per_epoch = self.data.batches_per_epoch
        self.masker = nam.NoiseAwareMasker(cfg.augment.mask_rate, cfg.augment.mask_mode)
        split = cfg.run.eval_split
        # composed benchmarks: no per-epoch person evaluation; `lineup eval --task composed` runs their protocol
        data = cfg.batches
        self.eval_records = (load_split(data.data, split, data.data_format)
                             if split and not _composed_benchmark(data) else [])
        self.eval_triplets = _triplets(data.data, data.data_format, split, required=False) if self.eval_records else []
        self._plan: tuple[int, list] | None = None

    def optimizer(self):
        return _optimizer(self.cfg.schedule, self.params)

    def scheduler(self, optimizer, total_steps: int):
        from transformers import get_scheduler

        return get_scheduler(self.cfg.schedule.scheduler, optimizer, num_warmup_steps=self.cfg.schedule.warmup_steps,
                             num_training_steps=total_steps)

    def begin_epoch(self, epoch: int, resumed: bool) -> None:
        aug = self.cfg.augment
        if aug.mask_mode == "nam" and not resumed and self.data.records and self.nam_estimates:
            keys, pairs = self.data.noise_pairs()
            scores = nam.estimate_word_noise(self.embedder, pairs, aug.nam_layer, aug.nam_joint,
                                             batch_size=self.cfg.run.eval_batch_size)
            self.masker.update(keys, nam.calibrate([c for _, c in pairs], scores))

    nam_estimates = True  # stage 1 re-estimates caption noise each epoch; stage 2 keeps the masker as it is

    def batch(self, epoch: int, position: int) -> tuple[str, tuple]:
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self.data.plan(epoch))
        return self._plan[1][position]

    def loss(self, batch, epoch: int, position: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.cfg.schedule.seed, 2, epoch, position])
        return self.alignment_terms(batch[1], rng)

    def alignment_terms(self, idx: tuple, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        emb, data, cfg, scale = self.embedder, self.data, self.cfg.loss, self.temperature()
        records = [data.records[i] for i in idx]
        pids = torch.tensor([r.person_id for r in records], device=emb.device)
        layer = self.cfg.augment.nam_layer if cfg.word_patch_weight else None
        img_batch = emb.image_batch([data.image(r.image) for r in records])
        captions = [data.caption(i, rng, self.masker) for i in idx]
        txt_batch = emb.text_batch(captions)
        img, img_h = emb.embed_with_states(img_batch, layer)
        txt, txt_h = emb.embed_with_states(txt_batch, layer)
        terms = {"contrastive": contrastive_loss(img, txt, scale, pids)}
        if cfg.word_patch_weight:
            txt_mask = txt_batch["token_kinds"].to(emb.device) == TEXT
            img_mask = img_batch["token_kinds"].to(emb.device) == IMAGE
            if cfg.word_patch_level == "word":
                shown = [data.person_text[r.person_id] for r in records]
                positives = caption_word_positives(captions, txt_batch["word_ids"], shown, pids).to(emb.device)
                wp = word_grounding_loss(txt_h, txt_mask, img_h, img_mask, positives, scale)
            else:
                wp = word_patch_loss(txt_h, txt_mask, img_h, img_mask, scale, pids)
            terms["word_patch"] = cfg.word_patch_weight * wp
        if cfg.identity_loss:
            terms["identity"] = cfg.identity_weight * identity_loss(cfg.identity_loss, img, pids,
                                                                    cfg.identity_temperature, cfg.triplet_margin)
        return terms

    def log(self) -> dict:
        return {"temperature": float(1.0 / self.temperature().detach())}

    def evaluate(self, epoch: int) -> dict | None:
        if not self.eval_records:
            return None
        metrics = evaluate(self.embedder, self.eval_records, self.eval_triplets, self.cfg.run.eval_batch_size)
        return {"split": self.cfg.run.eval_split, **metrics}

    def state_dict(self) -> dict:
        return {"temperature": self.temperature.state_dict(), "masker": self.masker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.temperature.load_state_dict(state["temperature"])
        self.masker.load_state_dict(state["masker"])

    def save_weights(self, folder: Path) -> None:
        self.embedder.save_adapter(folder)

    def load_weights(self, folder: Path) -> None:
        _load_adapter_weights(self.embedder, folder)


class Composed(Alignment):
    """Stage 2: composed query (reference image + modification) → target image InfoNCE on the triplet batches,
    stage-1 terms on the replayed stage-1 batches of the plan."""

    nam_estimates = False

    def loss(self, batch, epoch: int, position: int) -> dict[str, torch.Tensor]:
        kind, idx = batch
        if kind == "stage1":
            return super().loss(batch, epoch, position)
        emb, scale = self.embedder, self.temperature()
        trip = [self.data.triplets[i] for i in idx]
        target_pids = torch.tensor([t.target_id for t in trip], device=emb.device)
        q = emb.embed(emb.composed_batch([(self.data.image(t.reference), t.modification) for t in trip]))
        images, ref_pids = [t.target for t in trip], None
        if self.cfg.batches.reference_negatives:
            images += [t.reference for t in trip]
            ref_pids = torch.tensor([t.reference_id for t in trip], device=emb.device)
        candidates = emb.embed(emb.image_batch([self.data.image(i) for i in images]))
        return {"composed": contrastive_loss(q, candidates, scale, target_pids, ref_pids)}


OBJECTIVES = {"stage1": Alignment, "stage2": Composed}


# ---------------------------------------------------------------------------------------------- train


def train(stage: str, cfg: TrainConfig, callback: Callback = None) -> Path:
    """Fine-tune one stage and return the adapter folder (`run.output_dir/adapter`); the config as used is saved
    beside it (`resolved_config.yaml`).

    `callback(event)` gets {"event": "step", "step", "total_steps", "epoch", "kind", "loss", "terms" (the weighted
    loss terms by name), "lr", "temperature", "samples_per_s"} after every optimizer step and {"event": "eval",
    "step", "epoch", "split", **metrics} after each epoch's evaluation.
    """
    if stage not in OBJECTIVES:
        raise LineupError(f"stage={stage!r}: choose one of {list(OBJECTIVES)}")
    if stage == "stage2" and not cfg.model.init_adapter:
        logger.warning("stage 2 without init_adapter: starting from a fresh LoRA instead of the stage-1 adapter")
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = accelerator_for(cfg.run.precision)
    objective = OBJECTIVES[stage](stage, cfg, accelerator.device)
    save_resolved(cfg, out / RESOLVED_FILE, stage=stage)
    s, r = cfg.schedule, cfg.run
    settings = LoopSettings(epochs=s.epochs, max_steps=s.max_steps, max_grad_norm=s.max_grad_norm,
                            precision=r.precision, save_every=r.save_every, keep_checkpoints=r.keep_checkpoints,
                            resume=r.resume)
    fit(objective, settings, out, accelerator, callback, name=stage)
    adapter = out / "adapter"
    if accelerator.is_main_process:
        objective.embedder.save_adapter(adapter)
    accelerator.wait_for_everyone()
    return adapter
