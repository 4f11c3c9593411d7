"""Can a from-scratch vision tower read the world's attributes? ViT, ResNet and CNN, small world against large.

    OMP_NUM_THREADS=2 python benchmarks/tower_probe.py --world /tmp/demo-final/world \\
        --large-world /tmp/w10k [--steps 800]

Each tower is trained with attribute cross-entropy alone (one linear head per world attribute on the tower's
pooled features; the ViT pools with one learnt query per attribute, as `finetune.vision_pretrain` does) for the
same number of steps of 64 augmented 128×64 crops, on
- the train split of `--world` (the demo's: 751 people × 6 images), and
- the train split of `--large-world` (rendered here with `lineup world` settings when the folder is missing:
  10,000 people × 2 images, seed 7),
and scored on the held-out (val + test) people of `--world`. Towers: the previous base's (a 4-layer, 128-wide CLIP
ViT, 16-pixel patches), the base's (`mllm_embed.tiny.vision_config` of the tiny size: a basic-block ResNet of
stride 16, its 8×4 feature map read cell by cell) and the control's CNN (`benchmarks/control_dual_encoder.ImageTower`).
This is the measurement behind README's choice of tower: which attributes a tower of each kind learns to see at
all, and whether many people (no memorising a person by their colours) change that.
Prints a table and writes benchmarks/results/tower_probe.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.control_dual_encoder import ImageTower, augment, load_crops, to_input  # noqa: E402
from finetune.data import load_split  # noqa: E402
from finetune.data.world import ATTRIBUTES, WorldConfig, generate_world  # noqa: E402
from finetune.vision_pretrain import AttributeHeads  # noqa: E402

KEYS = list(ATTRIBUTES)
BATCH = 64


class ViTReader(torch.nn.Module):
    """The previous base's vision tower shape read by vision pre-training's attribute heads (one attention-pooling
    query and linear head per attribute)."""

    def __init__(self):
        super().__init__()
        from transformers import CLIPVisionModel

        from mllm_embed.tiny import SIZES, vision_config

        # the tiny size before the ResNet: a 4-layer, 128-wide ViT
        cfg = vision_config(replace(SIZES["tiny"], tower="vit", vision_hidden=128, vision_layers=4))
        self.vit = CLIPVisionModel(cfg)
        self.heads = AttributeHeads(cfg.hidden_size, [len(ATTRIBUTES[k]) for k in KEYS])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.heads(self.vit(x, interpolate_pos_encoding=True).last_hidden_state[:, 1:])


class ResNetReader(torch.nn.Module):
    """The base's ResNet tower, its feature map read cell by cell by vision pre-training's attribute heads.
    `stride` other than the tiny size's (16) adds or drops a stage, so a larger input keeps the 8×4 map."""

    def __init__(self, stride: int = 16):
        super().__init__()
        from transformers import ResNetModel

        from mllm_embed.tiny import SIZES, vision_config

        cfg = vision_config(replace(SIZES["tiny"], patch_size=stride))
        self.resnet = ResNetModel(cfg)
        self.heads = AttributeHeads(cfg.hidden_size, [len(ATTRIBUTES[k]) for k in KEYS])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.heads(self.resnet(x).last_hidden_state.flatten(2).transpose(1, 2))


class CNNReader(torch.nn.Module):
    """The control's CNN image tower with a linear head per attribute."""

    def __init__(self):
        super().__init__()
        self.tower = ImageTower(4, (32, 64, 128, 192), 4, 256)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(256, len(ATTRIBUTES[k])) for k in KEYS)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.tower(x)
        return [head(f) for head in self.heads]


TOWERS = {"vit": ("ViT (previous base)", ViTReader, 1e-3), "resnet": ("ResNet (base)", ResNetReader, 2e-3),
          "resnet32": ("ResNet of stride 32", partial(ResNetReader, 32), 2e-3),
          "cnn": ("CNN (control)", CNNReader, 2e-3)}


def labels(records) -> torch.Tensor:
    return torch.tensor([[ATTRIBUTES[k].index(r.attributes[k]) for k in KEYS] for r in records])


def train_and_score(make_reader, train, held_x, held_y, steps: int, lr: float, seed: int) -> dict:
    """Train a fresh reader on `train` at the held-out crops' size and score it on them."""
    torch.manual_seed(seed)  # before the reader is built: the seed fixes its initial weights too
    reader = make_reader()
    x, y = load_crops([r.image for r in train], *held_x.shape[-2:]), labels(train)
    opt = torch.optim.AdamW(reader.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    started = time.time()
    reader.train()
    for _ in range(steps):
        idx = torch.randint(0, len(train), (BATCH,), generator=gen)
        loss = sum(F.cross_entropy(logits, y[idx, a]) for a, logits in enumerate(reader(augment(x[idx], gen))))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reader.parameters(), 1.0)
        opt.step()
        sched.step()
    reader.eval()
    with torch.no_grad():
        outs = [reader(to_input(held_x[s:s + 256])) for s in range(0, len(held_x), 256)]
    acc = {k: 100 * float((torch.cat([o[a] for o in outs]).argmax(1) == held_y[:, a]).float().mean())
           for a, k in enumerate(KEYS)}
    return {"accuracy": acc, "train_images": len(train), "train_people": len({r.person_id for r in train}),
            "seconds": round(time.time() - started, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True, help="world whose held-out people score every tower")
    ap.add_argument("--large-world", required=True, help="many-people world (rendered here when missing)")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input", default="128x64", help="crop height x width every tower reads")
    ap.add_argument("--towers", nargs="+", choices=list(TOWERS), default=["vit", "resnet", "cnn"])
    ap.add_argument("--worlds", nargs="+", choices=["demo", "large"], default=["demo", "large"],
                    help="train splits each tower learns from")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "tower_probe.json"))
    args = ap.parse_args()
    large = Path(args.large_world)
    if not (large / "world.json").exists():
        generate_world(large, WorldConfig(identities=10000, images_per_id=2, seed=7))
    held = load_split(args.world, "val") + load_split(args.world, "test")
    height, width = (int(v) for v in args.input.split("x"))
    held_x, held_y = load_crops([r.image for r in held], height, width), labels(held)
    majority = {k: 100 * max(float((held_y[:, a] == c).float().mean()) for c in range(len(ATTRIBUTES[k])))
                for a, k in enumerate(KEYS)}
    rows = {}
    for tower in args.towers:
        title, make, lr = TOWERS[tower]
        for name in args.worlds:
            world = args.world if name == "demo" else large
            rows[f"{title}, {name} world"] = train_and_score(make, load_split(world, "train"), held_x, held_y,
                                                            args.steps, lr, args.seed)
    table = Table(title=f"held-out attribute accuracy % ({len(held)} images of {len({r.person_id for r in held})} "
                        f"people), {args.steps} steps × {BATCH}")
    table.add_column("tower, train world")
    for k in KEYS:
        table.add_column(k.replace("_", " "), justify="right")
    table.add_row("majority answer", *(f"{majority[k]:.0f}" for k in KEYS))
    for name, row in rows.items():
        table.add_row(f"{name} ({row['train_people']} people)", *(f"{row['accuracy'][k]:.0f}" for k in KEYS))
    Console(width=200).print(table)
    out = {"world": args.world, "large_world": str(large), "steps": args.steps, "batch": BATCH,
           "input": [height, width], "held_out_images": len(held), "majority": majority, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
