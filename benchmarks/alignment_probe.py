"""What do the embeddings know? Collapse and linear attribute probes of image and text embeddings.

    OMP_NUM_THREADS=2 python benchmarks/alignment_probe.py --base DIR --world DIR [--adapter DIR ...]

For the base and each adapter: the mean pairwise cosine of image embeddings and of caption embeddings
(near 1.0 means every input lands on one vector: collapse), and how well a ridge-regression probe trained on
the train split's embeddings predicts attributes of held-out (test split) people, next to the majority
answer and the same probe on raw 8x16 pixels. A text→image embedder is only possible when both modalities
carry the attributes; this is the check behind the text→image gap reported for issues 4 and 14. Also the
world's text→image ceiling: the Rank-1 of a reader that matches every attribute a test caption states exactly
(ties broken at random), i.e. what perfect perception and alignment reach when captions leave attributes out,
and the same reader blind to the attributes the shipped base's tower reads worst (`UNSEEN`).
Prints a table and writes benchmarks/results/alignment_probe.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.data import PersonImage, load_split  # noqa: E402
from finetune.data.world import stated_attributes  # noqa: E402
from mllm_embed import load_embedder  # noqa: E402

ATTRIBUTES = ("gender", "upper_color", "upper_type", "lower_color", "lower_type", "hair_color", "shoes_color", "bag")


def probe(train_x: np.ndarray, train_y: list, test_x: np.ndarray, test_y: list, ridge: float = 10.0) -> float:
    """Accuracy of a one-vs-rest ridge classifier on standardised features."""
    classes = sorted(set(train_y) | set(test_y))
    index = {c: i for i, c in enumerate(classes)}
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    targets = np.eye(len(classes))[[index[y] for y in train_y]]
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ targets)
    return float(np.mean((b @ w).argmax(1) == np.array([index[y] for y in test_y])))


# what the shipped base's tower reads worst (`mllm_embed/bases/tiny/vision_pretrain.json`: held-out glasses at the
# majority answer, upper type 59 % of five kinds)
UNSEEN = frozenset({"upper_type", "glasses"})


def ceiling(gallery: list[PersonImage], blind: frozenset = frozenset()) -> float:
    """Expected text→image Rank-1 (%) of an exact reader of the stated attributes (except those in `blind`),
    over every caption of `gallery`: the target's share of the gallery images that agree with everything the
    caption states."""
    scores = []
    for r in gallery:
        for caption in r.captions:
            said = stated_attributes(caption) - blind
            agree = [g.person_id for g in gallery if all(g.attributes[a] == r.attributes[a] for a in said)]
            scores.append(agree.count(r.person_id) / len(agree))
    return 100 * float(np.mean(scores))


def spread(x: np.ndarray) -> float:
    sim = x @ x.T
    return float(sim[~np.eye(len(x), dtype=bool)].mean())


def pixels(records: list[PersonImage]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(r.image).convert("RGB").resize((8, 16)), dtype=np.float32).ravel()
                     for r in records]) / 255.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--world", required=True)
    ap.add_argument("--adapter", action="append", default=[], help="adapter folder (repeatable)")
    ap.add_argument("--train", type=int, default=600, help="train-split records the probe fits on")
    ap.add_argument("--test", type=int, default=300, help="test-split records it is scored on")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "alignment_probe.json"))
    args = ap.parse_args()
    started = time.time()
    full_test = load_split(args.world, "test")
    train, test = load_split(args.world, "train")[: args.train], full_test[: args.test]
    labels = {a: ([r.attributes[a] for r in train], [r.attributes[a] for r in test]) for a in ATTRIBUTES}
    rows = {"majority": {a: max(te.count(v) for v in set(te)) / len(te) for a, (_, te) in labels.items()},
            "pixels 8x16": {a: probe(pixels(train), tr, pixels(test), te) for a, (tr, te) in labels.items()}}
    t2i_ceiling, blind_ceiling = ceiling(full_test), ceiling(full_test, UNSEEN)
    for adapter in [None, *args.adapter]:
        emb = load_embedder(args.base, adapter=adapter)
        name = "base" if adapter is None else Path(adapter).parent.name or str(adapter)
        for kind, encode, item in (("image", emb.encode_images, lambda r: r.image),
                                   ("text", emb.encode_text, lambda r: r.captions[0])):
            x_train, x_test = (encode([item(r) for r in rs]) for rs in (train, test))
            rows[f"{name} {kind}"] = {"mean cosine": spread(x_test),
                                      **{a: probe(x_train, tr, x_test, te) for a, (tr, te) in labels.items()}}
    table = Table(title=f"attribute probes on held-out people ({len(test)} test records)")
    for col in ("features", "mean cosine", *ATTRIBUTES):
        table.add_column(col, justify="left" if col == "features" else "right")
    for name, row in rows.items():
        table.add_row(name, *(f"{row[c]:.2f}" if c in row else "" for c in ("mean cosine", *ATTRIBUTES)))
    Console().print(table)
    Console().print(f"text→image Rank-1 ceiling of an exact attribute reader on the whole test split "
                    f"({len(full_test)} images): {t2i_ceiling:.1f}; blind to {', '.join(sorted(UNSEEN))}: "
                    f"{blind_ceiling:.1f}")
    result = {"world": args.world, "base": args.base, "adapters": args.adapter, "train": len(train),
              "test": len(test), "rows": rows, "t2i_rank1_ceiling": t2i_ceiling,
              "t2i_rank1_ceiling_blind": {"blind_to": sorted(UNSEEN), "rank1": blind_ceiling},
              "seconds": round(time.time() - started, 1)}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
