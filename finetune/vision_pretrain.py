"""Vision pre-training of the offline base, before stage 0: the tower learns to see before the LM learns to speak.

Real MLLMs start from a pre-trained vision tower (CLIP, SigLIP); a base built from scratch here gets the
equivalent from the world it can render: the vision tower and projector of a freshly built base are trained on
the world's train split with
- attribute supervision: per world attribute (gender, hair, garment types and colours, shoes, bag, hat,
  glasses) a learnt query attends over the projected patch features (the LM will read those tokens one by one
  too, so an attribute is learnt where it is, not averaged with the background) and a linear head classifies
  the result; cross-entropy summed over attributes;
- an identity loss: SupCon over P identities × K images per batch (other cameras, views and poses of one
  person are positives), on the mean of the projected patch features.
Only the vision tower and projector are saved back (the heads are thrown away); the language model is
untouched. Writes `vision_pretrain.json` (loss curve, held-out attribute accuracy) into the model folder.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from finetune.data import PersonImage, load_split, read_jsonl
from finetune.config import VisionPretrainConfig
from finetune.loop import METRICS_FILE, LoopSettings, accelerator_for, fit, load_tensors, save_tensors
from mllm_embed.errors import LineupError

logger = logging.getLogger(__name__)

DONE_FILE = "vision_pretrain.json"
RUN_DIR = "vision_run"  # inside the model folder while vision pre-training runs: a folder per cycle
TOWER_FILE = "tower.safetensors"
HEADS_FILE = "heads.safetensors"


def _people(world_dir: Path, splits: tuple[str, ...]) -> list[PersonImage]:
    return [r for r in load_split(world_dir, None) if r.split in splits and r.attributes]


class _Tower(torch.nn.Module):
    """Vision tower + projector of a LLaVA- or FastVLM-style model: (n, 3, H, W) → the (n, tokens, text hidden)
    features the language model sees (a ViT's patch states, or a convolutional tower's feature map cell by
    cell)."""

    def __init__(self, model):
        super().__init__()
        inner = model.model
        self.vision, self.projector = inner.vision_tower, inner.multi_modal_projector
        self.feature_map = model.config.model_type == "fast_vlm"
        self.layer = model.config.vision_feature_layer
        self.drop_cls = model.config.vision_feature_select_strategy == "default"

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.feature_map:
            return self.projector(self.vision(pixels).last_hidden_state.flatten(2).transpose(1, 2))
        states = self.vision(pixels, output_hidden_states=True).hidden_states[self.layer]
        return self.projector(states[:, 1:] if self.drop_cls else states)


class AttributeHeads(torch.nn.Module):
    """One learnt query per attribute attends over the image tokens; a linear head per attribute classifies."""

    def __init__(self, hidden: int, classes: list[int]):
        super().__init__()
        self.queries = torch.nn.Parameter(torch.randn(len(classes), hidden) * hidden ** -0.5)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden, n) for n in classes)

    def forward(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        weights = torch.softmax(torch.einsum("nlh,ah->nal", tokens, self.queries), dim=-1)
        pooled = torch.einsum("nal,nlh->nah", weights, tokens)
        return [head(pooled[:, a]) for a, head in enumerate(self.heads)]


class _Cycle:
    """One warm-restart cycle as a `finetune.loop.Objective`: its own warmup + cosine schedule and fresh heads
    on the tower the previous cycle left; each step P identities × K images (drawn from (seed, step)), attribute
    cross-entropy plus SupCon over identities."""

    def __init__(self, tower, hidden: int, classes: list[int], pixels, labels, by_pid: dict, cfg: VisionPretrainConfig,
                 seed: int):
        torch.manual_seed(seed)
        self.tower, self.pixels, self.labels, self.by_pid, self.cfg, self.seed = tower, pixels, labels, by_pid, cfg, seed
        self.pids = {i: p for p, images in by_pid.items() for i in images}
        self.heads = AttributeHeads(hidden, classes)
        self.params = list(tower.parameters()) + list(self.heads.parameters())
        self.steps_per_epoch = cfg.steps

    def optimizer(self):
        return torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def scheduler(self, optimizer, total_steps: int):
        from finetune.stage0 import warmup_cosine

        return warmup_cosine(optimizer, self.cfg.warmup_steps, total_steps)

    def begin_epoch(self, epoch: int, resumed: bool) -> None:
        self.tower.train()

    def batch(self, epoch: int, position: int) -> tuple[str, list[int]]:
        """P identities × K images (with replacement when a person has fewer than K)."""
        rng, cfg, by_pid = random.Random(f"vision:{self.seed}:{position}"), self.cfg, self.by_pid
        chosen = rng.sample(sorted(by_pid), min(cfg.identities_per_batch, len(by_pid)))
        return "vision", [rng.choice(by_pid[p]) if len(by_pid[p]) < cfg.images_per_identity else i
                          for p in chosen for i in rng.sample(by_pid[p], min(len(by_pid[p]), cfg.images_per_identity))]

    def loss(self, batch, epoch: int, position: int) -> dict[str, torch.Tensor]:
        from finetune.losses import supcon_loss

        idx = torch.tensor(batch[1])
        x = self.pixels[idx]
        flip = torch.rand(len(idx)) < 0.5  # mirror images: bags and poses appear on both sides
        tokens = self.tower(torch.where(flip[:, None, None, None], x.flip(-1), x))
        y = self.labels[idx]
        terms = {"attributes": sum(torch.nn.functional.cross_entropy(logits, y[:, a])
                                   for a, logits in enumerate(self.heads(tokens)))}
        if self.cfg.identity_weight:
            pids = torch.tensor([self.pids[i] for i in batch[1]])
            terms["identity"] = self.cfg.identity_weight * supcon_loss(
                torch.nn.functional.normalize(tokens.mean(1), dim=-1), pids, self.cfg.temperature)
        return terms

    def log(self) -> dict:
        return {}

    def evaluate(self, epoch: int) -> None:
        return None  # held-out attribute accuracy is scored after the cycle

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def save_weights(self, folder: Path) -> None:
        save_tensors(self.tower.state_dict(), folder, TOWER_FILE)
        save_tensors(self.heads.state_dict(), folder, HEADS_FILE)

    def load_weights(self, folder: Path) -> None:
        load_tensors(folder, TOWER_FILE, self.tower.load_state_dict)
        load_tensors(folder, HEADS_FILE, self.heads.load_state_dict)


def pretrain_vision(model_dir: str | Path, world_dir: str | Path, cfg: VisionPretrainConfig | None = None,
                    progress: Callable[[int], None] | None = None) -> dict:
    """Train the vision tower + projector of the base in `model_dir` on the world's train split; saves in place."""
    from transformers import AutoModelForImageTextToText

    from finetune.data.world import ATTRIBUTES
    from mllm_embed.embedder import load_image
    from mllm_embed.families import FastVlmFamily, LlavaFamily, family_for

    cfg = cfg or VisionPretrainConfig()
    model_dir, world_dir = Path(model_dir), Path(world_dir)
    started = time.time()
    train = _people(world_dir, ("train",))
    if not train:
        raise LineupError(f"{world_dir}: no train images with attributes; vision pre-training needs a synthetic world")
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    offline = (*LlavaFamily.model_types, *FastVlmFamily.model_types)
    if model.config.model_type not in offline:
        raise LineupError(f"{model_dir}: vision pre-training builds on the offline bases ({', '.join(offline)}), "
                          f"not {model.config.model_type}")
    family = family_for(model.config.model_type)(str(model_dir))
    family.prepare(model)
    processor = family.image_processor
    keys = list(ATTRIBUTES)

    def tensors(rows: list[PersonImage]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.cat([processor([load_image(r.image) for r in rows[s:s + 256]], return_tensors="pt")
                            ["pixel_values"] for s in range(0, len(rows), 256)])
        labels = torch.tensor([[ATTRIBUTES[k].index(r.attributes[k]) for k in keys] for r in rows])
        return pixels, labels

    pixels, labels = tensors(train)
    by_pid: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(train):
        by_pid[r.person_id].append(i)

    tower = _Tower(model)
    hidden = model.config.get_text_config().hidden_size
    held_out = _people(world_dir, ("val", "test"))
    held_pixels, held_labels = tensors(held_out[: cfg.eval_images]) if held_out and cfg.eval_images else (None, None)

    run = model_dir / RUN_DIR
    cycles = []
    for c in range(cfg.cycles):
        folder = run / f"cycle-{c}"
        if (folder / "result.json").exists():  # finished before an interruption: its tower is the next one's start
            cycles.append(json.loads((folder / "result.json").read_text()))
            continue
        if c:
            load_tensors(run / f"cycle-{c - 1}", TOWER_FILE, tower.load_state_dict)
        cycle = _Cycle(tower, hidden, [len(ATTRIBUTES[k]) for k in keys], pixels, labels, by_pid, cfg, cfg.seed + c)
        settings = LoopSettings(epochs=1, max_grad_norm=1.0, save_every=cfg.save_every, resume=True)
        fit(cycle, settings, folder, accelerator_for("no"), name=f"vision pre-training cycle {c}",
            callback=progress and (lambda row: row["event"] == "step" and progress(1)))
        curve = [row["loss"] for row in read_jsonl(folder / METRICS_FILE)]
        out = {"loss_curve": [round(v, 4) for v in curve[:: max(1, cfg.steps // 50)]],
               "final_loss": sum(curve[-20:]) / len(curve[-20:])}
        if held_pixels is not None:
            tower.eval()
            with torch.no_grad():
                logits = [torch.cat(parts) for parts in zip(*(cycle.heads(tower(held_pixels[s:s + 128]))
                                                              for s in range(0, len(held_pixels), 128)))]
            acc = {k: float((logits[a].argmax(1) == held_labels[:, a]).float().mean()) for a, k in enumerate(keys)}
            out |= {"held_out_attribute_accuracy": acc, "held_out_mean_accuracy": sum(acc.values()) / len(acc)}
            logger.info("vision pre-training cycle %d: held-out attribute accuracy %.3f", c, out["held_out_mean_accuracy"])
        save_tensors(tower.state_dict(), folder, TOWER_FILE)
        (folder / "result.json").write_text(json.dumps(out))
        cycles.append(out)
    result = {"steps": cfg.steps * cfg.cycles, "train_images": len(train), "held_out_images": len(held_out),
              "cycles": cycles, **{k: v for k, v in cycles[-1].items() if k.startswith("held_out")},
              "config": asdict(cfg)}
    model.save_pretrained(model_dir)
    result["seconds"] = round(time.time() - started, 1)
    (model_dir / DONE_FILE).write_text(json.dumps(result, indent=2))
    shutil.rmtree(run)
    return result
