"""What the MLLM's answers to the question bank buy: yes/no judges and answer re-ranking (`retrieval.judge`).

    OMP_NUM_THREADS=2 python benchmarks/answers.py --base DIR --world DIR --adapter DIR [--out FILE]

The base MLLM answers the 16 bank questions about every val and test image once, as the engine asks them
(`bank_answerer`: one of the question's values); then, on the world's test split (val where a choice is made):
0. the answers themselves: share equal to the true answer per question on val + test (held-out people), overall
   and per view (front / back / side), and hair colour per hat; also read from four views of each image
   (`bank_answerer(views=True)`); the issue's five questions (garment types and colours, hair colour) — the demo
   keeps only 48 people apart — also on `--base-images` train images: people the base never saw either (stage 0
   trains on the bootstrap's own world, and answers come with the LoRA adapter disabled);
1. same-person verification over `retrieval.evaluate.sample_pairs` (half same person): ROC AUC of the embedding
   cosine, the direct yes/no (`verify_question`, two crops side by side) and the answers judge;
2. caption–image match over `finetune.stage0.Judgements.match` pairs (half yes; half the no's hard: a noisy
   caption or a one-edit neighbour's): AUC and balanced accuracy of the direct yes/no (`match_question`) and of
   the answers judge per threshold (val picks `THIConfig.judge_threshold`);
3. answer re-ranking: text→image and composed retrieval (`evaluate_t2i`, `evaluate_composed`) at answer weights
   0–0.5 (`retrieval.judge.evidence`) on val and test (val picks `retrieval.judge.ANSWER_WEIGHT`), with true
   answers as the ceiling; and the captions' own limit (`caption_oracle`);
4. THI auto (60 queries, 3 rounds) with either judge: Rank-1 / mAP per round.
Prints tables and writes benchmarks/results/answers.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.data import load_split, load_triplets  # noqa: E402
from finetune.data.jsonl import read_jsonl  # noqa: E402
from finetune.data.render import VIEWS  # noqa: E402
from finetune.data.world import QUESTION_BANK, answer_from_attributes  # noqa: E402
from finetune.stage0 import Judgements, split_people  # noqa: E402
from mllm_embed import load_embedder  # noqa: E402
from retrieval.evaluate import (EvalConfig, certain, encode_gallery, evaluate_composed, evaluate_t2i,  # noqa: E402
                                evaluate_thi_dataset, evaluate_verification)
from retrieval.judge import ANSWER_WEIGHT, bank_answerer, gallery_answers, match_score, world_vocabulary  # noqa: E402
from retrieval.metrics import roc_auc  # noqa: E402
from retrieval.thi import THIConfig  # noqa: E402

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)


def _balanced(said: np.ndarray, yes: np.ndarray) -> float:
    return 100 * float((said[yes].mean() + (~said[~yes]).mean()) / 2)


# the questions issue 14's VQA target names
TARGET_KEYS = ("upper_type", "upper_color", "lower_type", "lower_color", "hair_color")


def views(world: Path) -> dict[str, str]:
    """Each image's view (front / back / side) by file name, from the world's annotations."""
    return {Path(row["image"]).name: row["view"] for row in read_jsonl(world / "annotations.jsonl")}


def answer_accuracy(world: Path, people, answers: dict, bank=QUESTION_BANK) -> dict:
    """% of the MLLM's answers equal to the true one, per question of `bank`: overall and per view."""
    view_of = views(world)
    out = {}
    for q in bank:
        right = [(answers[p.image][q["key"]] == answer_from_attributes(p.attributes, q["key"]),
                  view_of[Path(p.image).name]) for p in people]
        out[q["key"]] = {"all": 100 * float(np.mean([ok for ok, _ in right])),
                         **{v: 100 * float(np.mean([ok for ok, w in right if w == v])) for v in VIEWS}}
    return out


def hair_by_hat(people, answers: dict) -> dict:
    """Hair colour answers per hat the person wears (a beanie or cap leaves a few pixels of short hair): % right
    and how many images."""
    out = {}
    for hat in sorted({p.attributes["hat"] for p in people}):
        right = [answers[p.image]["hair_color"] == p.attributes["hair_color"] for p in people
                 if p.attributes["hat"] == hat]
        out[hat] = {"right": round(100 * float(np.mean(right)), 1), "images": len(right)}
    return out


def _vqa_table(title: str, accuracy: dict) -> Table:
    table = Table(title=title)
    for col in ("question", "all", *VIEWS):
        table.add_column(col)
    for key, acc in accuracy.items():
        table.add_row(key, *[f"{acc[c]:.1f}" for c in ("all", *VIEWS)])
    return table


def match_judges(embedder, people, answers: dict, vocabulary, n: int) -> dict:
    pairs = Judgements(people, embedder.config).match(n, random.Random(0))
    caption_of = {embedder.config.match_prompt(c): c for p in people for c in [*p.captions, p.noisy_caption or ""]}
    yes = np.array([a == "yes" for _, _, a, _ in pairs])
    graded = np.array([match_score(answers[image], caption_of[q], vocabulary) for image, q, _, _ in pairs])
    direct = np.array([embedder.answer(image, q).startswith("yes") for image, q, _, _ in pairs])
    return {"pairs": len(pairs), "direct": {"auc": roc_auc(direct.astype(float), yes),
                                            "balanced_accuracy": _balanced(direct, yes)},
            "answers": {"auc": roc_auc(graded, yes),
                        "balanced_accuracy_by_threshold": {t: _balanced(graded >= t, yes) for t in THRESHOLDS}}}


def rerank_sweep(embedder, world: Path, split: str, answers: dict, vocabulary) -> dict:
    records = load_split(world, split, required=True)
    triplets = load_triplets(world, split)
    vecs = encode_gallery(embedder, records, 32)
    return {source: {w: searches(embedder, records, triplets, vecs, answers, vocabulary, source, w) for w in WEIGHTS}
            for source in ("mllm", "truth")}


def caption_oracle(records, vocabulary) -> float:
    """Text→image Rank-1 (%) of a perfect reader of the captions with nothing else to go on: every caption of
    `records` as a query, the images whose true answers agree with the most of what it states (``stated``) tied
    first, a query scoring the share of them that show its person (the tie broken at random). How far a gallery's
    people can be told apart by what its captions state, whatever the model."""
    truths = [{q["key"]: vocabulary.canonical(q["key"], answer_from_attributes(r.attributes, q["key"]))
               for q in QUESTION_BANK} for r in records]
    people = np.array([r.person_id for r in records])
    hits = []
    for r in records:
        for caption in r.captions:
            stated = vocabulary.stated(caption).items()
            agree = np.array([sum(truth.get(k) == v for k, v in stated) for truth in truths])
            hits.append(float((people[agree == agree.max()] == r.person_id).mean()))
    return 100 * float(np.mean(hits))


def searches(embedder, records, triplets, vecs, answers: dict, vocabulary, source: str, weight: float) -> dict:
    """{t2i, composed} on `records` as the gallery (`vecs` their embeddings), re-ranked at `weight` with the MLLM's
    `answers` (source "mllm") or with true answers counted as certain ("truth")."""
    rows = [answers[r.image] if source == "mllm" else
            {q["key"]: answer_from_attributes(r.attributes, q["key"]) for q in QUESTION_BANK} for r in records]
    kw = {"image_vecs": vecs, "batch_size": 32, "answers": rows, "vocabulary": vocabulary, "answer_weight": weight,
          "reliability": certain(QUESTION_BANK) if source == "truth" else None}
    return {"t2i": evaluate_t2i(embedder, records, **kw),
            "composed": evaluate_composed(embedder, records, triplets, **kw)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--adapter", type=Path, required=True, help="the embedder's adapter (stage 2)")
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--thi-queries", type=int, default=60)
    ap.add_argument("--base-images", type=int, default=600,
                    help="train images whose answers to the target questions are scored too (0: none)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "answers.json")
    args = ap.parse_args()
    start = time.time()
    embedder = load_embedder(str(args.base), adapter=str(args.adapter))
    vocabulary = world_vocabulary()
    people = {split: split_people(args.world, split) for split in ("val", "test")}
    ask = bank_answerer(embedder, vocabulary)
    held_out = [p for ps in people.values() for p in ps]
    answers = gallery_answers(ask, [p.image for p in held_out], QUESTION_BANK)
    asked = time.time() - start
    accuracy = answer_accuracy(args.world, held_out, answers)
    targets = [q for q in QUESTION_BANK if q["key"] in TARGET_KEYS]
    four_views = answer_accuracy(args.world, held_out, gallery_answers(
        bank_answerer(embedder, vocabulary, views=True), [p.image for p in held_out], QUESTION_BANK))
    train = split_people(args.world, "train")
    unseen = random.Random(0).sample(train, min(args.base_images, len(train)))
    unseen_accuracy = answer_accuracy(args.world, unseen, gallery_answers(
        ask, [p.image for p in unseen], targets), targets) if unseen else {}
    verify = evaluate_verification(embedder, load_split(args.world, "test", required=True),
                                   config=EvalConfig(pairs=args.pairs), answers=answers)
    match = {split: match_judges(embedder, people[split], answers, vocabulary,
                                 args.pairs // (2 if split == "val" else 1)) for split in ("val", "test")}
    rerank = {split: rerank_sweep(embedder, args.world, split, answers, vocabulary) for split in ("val", "test")}
    oracle = {split: caption_oracle(load_split(args.world, split, required=True), vocabulary) for split in rerank}
    thi = {judge: evaluate_thi_dataset(embedder, args.world, QUESTION_BANK,
                                       THIConfig(mode="auto", rounds=3, judge=judge), max_queries=args.thi_queries,
                                       answers=answers) for judge in ("answers", "question")}
    report = {"world": str(args.world), "base": str(args.base), "adapter": str(args.adapter),
              "answer_weight": ANSWER_WEIGHT, "judge_threshold": THIConfig().judge_threshold,
              "images_asked": len(answers), "seconds_asking": round(asked, 1), "answer_accuracy": accuracy,
              "answer_accuracy_four_views": four_views, "hair_color_by_hat": hair_by_hat(held_out, answers),
              "answer_accuracy_train_images": {"images": len(unseen), "by_question": unseen_accuracy},
              "verification": verify, "match": match, "rerank": rerank, "caption_oracle": oracle, "thi_auto": thi,
              "seconds": round(time.time() - start, 1)}

    console = Console()
    console.print(_vqa_table(f"the MLLM's answers, % right on {len(people['val']) + len(people['test'])} held-out "
                             "images", accuracy))
    console.print(_vqa_table("the same read from four views of each image (mirror, moved; not the engine's)",
                             four_views))
    console.print(f"hair colour by hat (% right, images): {report['hair_color_by_hat']}")
    if unseen:
        console.print(_vqa_table(f"the same on {len(unseen)} train images (people the base never saw either)",
                                 unseen_accuracy))
    judges = Table(title=f"MLLM judges, test split (match threshold {report['judge_threshold']})")
    for col in ("judge", "same person AUC", "match AUC", "match balanced acc."):
        judges.add_column(col)
    test = match["test"]
    judges.add_row("embedding cosine", f"{verify['embedding']['auc']:.3f}", "", "")
    judges.add_row("direct yes/no", f"{verify['mllm']['auc']:.3f}", f"{test['direct']['auc']:.3f}",
                   f"{test['direct']['balanced_accuracy']:.1f}")
    judges.add_row("answers", f"{verify['mllm_answers']['auc']:.3f}", f"{test['answers']['auc']:.3f}",
                   f"{test['answers']['balanced_accuracy_by_threshold'][report['judge_threshold']]:.1f}")
    console.print(judges)
    sweep = Table(title="answer re-ranking (MLLM answers; true answers in brackets)")
    for col in ("split", "weight", "text→image R1", "mAP", "composed identity R1", "exact R@10"):
        sweep.add_column(col)
    for split, sources in rerank.items():
        for w in WEIGHTS:
            got, true = sources["mllm"][w], sources["truth"][w]
            sweep.add_row(split, str(w), *[f"{got[task][key]:.1f} ({true[task][key]:.1f})" for task, key in
                                           (("t2i", "R1"), ("t2i", "mAP"), ("composed", "R@1"),
                                            ("composed", "exact_R@10"))])
    console.print(sweep)
    console.print("a perfect reader of the captions' text→image R1: " +
                  ", ".join(f"{split} {value:.1f}" for split, value in oracle.items()))
    rounds = Table(title="THI auto: Rank-1 / mAP per round")
    rounds.add_column("judge")
    for r in thi["answers"]:
        rounds.add_column(f"round {r['round']}")
    for judge, rows in thi.items():
        rounds.add_row(judge, *[f"{r['R1']:.1f} / {r['mAP']:.1f}" for r in rows])
    console.print(rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {args.out} in {report['seconds']} s")


if __name__ == "__main__":
    main()
