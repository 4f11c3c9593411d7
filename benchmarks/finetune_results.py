"""Fine-tuning ablations on a synthetic world with the offline tiny base.

    OMP_NUM_THREADS=1 python benchmarks/finetune_results.py [--identities 72] [--epochs 25] [--work DIR]

Builds (or reuses, in --work) a world and a stage-0 pre-trained `test`-size base, then trains and evaluates
on the test split (identities never seen in training):
  - base vs stage 1 vs stage 2: text→image R1/mAP, composed R@1/5/10;
  - captions corrupted by wrong words (train on the noisy caption whenever an image has one):
    no masking vs uniform masking vs NAM at the same rate, plus NAM's wrong-word detection AUC on two
    freshly corrupted captions per train image;
  - identity loss off / SupCon / batch-hard triplet: image→image R1/mAP (cross-camera);
  - the word–patch alignment loss with trained token embeddings (and NAM driven by it), and 3× longer stage 1;
  - word-level grounding on the input layer with the vision tower trained in full (what NAM reads), with
    noisy captions under no / uniform / NAM masking;
  - default prompts vs the common instruction.
Prints a table and writes benchmarks/results/finetune_results.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.ui import metrics_table  # noqa: E402
from finetune import nam  # noqa: E402
from finetune.data import load_split  # noqa: E402
from finetune.data.world import WorldConfig, generate_world, world_texts  # noqa: E402
from finetune.stage0 import Stage0Config, pretrain  # noqa: E402
from finetune.config import RECIPES, TrainConfig  # noqa: E402
from finetune.train import evaluate_split, train  # noqa: E402
from mllm_embed import load_embedder  # noqa: E402
from mllm_embed.tiny import build_tiny_base  # noqa: E402

KEYS = ("t2i_R1", "t2i_mAP", "i2i_R1", "i2i_mAP", "comp_R@1", "comp_R@5", "comp_R@10", "comp_id_R1", "comp_id_mAP")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=72)
    parser.add_argument("--epochs", type=int, default=None, help="stage-1 epochs (default: recipes/bench-finetune.yaml's)")
    parser.add_argument("--lr", type=float, default=None, help="default: recipes/bench-finetune.yaml's")
    parser.add_argument("--work", default="/tmp/lineup-finetune-bench")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "finetune_results.json"))
    args = parser.parse_args()
    console = Console()
    started = time.time()
    work = Path(args.work)
    world, base = work / "world", work / "base"
    if not (world / "world.json").exists():
        generate_world(world, WorldConfig(identities=args.identities, images_per_id=4, seed=11))
    if not (base / "stage0_done.json").exists():
        build_tiny_base(world_texts(world), base, size="test")
        pretrain(base, world, Stage0Config.for_tests())

    recipe = TrainConfig.from_recipe(RECIPES / "bench-finetune.yaml", "stage1").with_overrides(
        {"base_model": str(base), "data": str(world),
         **{k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}})
    epochs = recipe.schedule.epochs
    grounding = TrainConfig.from_recipe(RECIPES / "word-grounding.yaml", "stage1")
    rows: dict[str, dict] = {}
    timings: dict[str, float] = {}

    def run(name: str, stage: str, **kw) -> Path:
        t0 = time.time()
        adapter = train(stage, recipe.with_overrides({"output_dir": str(work / name.replace(" ", "_")), **kw}))
        rows[name] = evaluate_split(load_embedder(base, adapter=adapter), world, "test")
        timings[name] = round(time.time() - t0, 1)
        console.log(f"{name}: {rows[name]} ({timings[name]} s)")
        return adapter

    base_embedder = load_embedder(base)
    rows["base"] = evaluate_split(base_embedder, world, "test")
    s1 = run("stage 1", "stage1")
    run("stage 2", "stage2", init_adapter=str(s1), lr=2e-4)
    run("stage 1, no identity loss", "stage1", identity_loss=None)
    run("stage 1, triplet identity loss", "stage1", identity_loss="triplet")
    run("stage 1, common instruction", "stage1", prompt_style="common")
    fine = {"word_patch_weight": 0.5, "token_embeddings": "full", "nam_joint": False}
    wp = run("stage 1, word–patch loss", "stage1", **fine)
    run("stage 1, 3× epochs", "stage1", epochs=3 * epochs)
    run("stage 1, word–patch loss, 3× epochs", "stage1", epochs=3 * epochs, **fine)
    for mode in ("none", "uniform", "nam"):
        run(f"noisy captions, mask {mode}", "stage1", noisy_caption_prob=1.0, mask_mode=mode, mask_rate=0.2)
    run("noisy captions, mask nam, word–patch", "stage1", noisy_caption_prob=1.0, mask_mode="nam", mask_rate=0.2, **fine)
    # word-level grounding on the input layer NAM reads, vision tower trained in full
    g = grounding
    ground = {"epochs": 3 * epochs, "word_patch_weight": g.loss.word_patch_weight, "word_patch_level": g.loss.word_patch_level,
              "nam_layer": g.augment.nam_layer, "nam_joint": g.augment.nam_joint,
              "token_embeddings": g.model.token_embeddings, "lora_vision": g.model.lora_vision}
    grounded = run("stage 1, word grounding, 3× epochs", "stage1", **ground)
    for mode in ("none", "uniform", "nam"):
        run(f"noisy captions, mask {mode}, word grounding, 3× epochs", "stage1", noisy_caption_prob=1.0,
            mask_mode=mode, mask_rate=0.2, **ground)

    # NAM's wrong-word detection on 2 freshly corrupted captions per train image (calibrated scores)
    train_records = load_split(world, "train")
    s1_embedder, wp_embedder = load_embedder(base, adapter=s1), load_embedder(base, adapter=wp)
    grounded_embedder = load_embedder(base, adapter=grounded)
    auc = {name: 100 * nam.detection_auc(emb, train_records, layer, joint) for name, emb, layer, joint in [
        ("base", base_embedder, -1, True), ("base, two-tower", base_embedder, -1, False),
        ("base, two-tower, input layer", base_embedder, 0, False), ("stage 1", s1_embedder, -1, True),
        ("stage 1, two-tower", s1_embedder, -1, False), ("stage 1 + word–patch, two-tower", wp_embedder, -1, False),
        ("stage 1 + word grounding, two-tower, input layer", grounded_embedder, 0, False)]}

    table = {name: {k: m[k] for k in KEYS if k in m} for name, m in rows.items()}
    console.print(metrics_table("Fine-tuning on the synthetic world (test split, %)", table))
    console.print(metrics_table("NAM wrong-word detection AUC (%)", {k: {"AUC": v} for k, v in auc.items()}))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"world": {"identities": args.identities, "images_per_id": 4, "seed": 11},
                               "base": "tiny 'test' size, Stage0Config.for_tests()", "train": recipe.to_dict(),
                               "results": rows, "nam_auc": auc, "train_seconds": timings,
                               "total_seconds": round(time.time() - started, 1),
                               "machine": platform.processor() or platform.machine()}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
