"""Evaluate an embedder on a person dataset: text→image, image→image, composed Recall@K, verification, THI.

Protocols (numbers come from ``retrieval.metrics`` applied to the similarity matrices built here):
- text→image: queries = every caption of the split's images, gallery = the split's images.
- image→image: every image queries the others; same-person same-camera gallery items are excluded
  (the standard ReID protocol), so a person needs a second camera to count; without camera ids (-1) only the
  query image itself is excluded.
- composed: queries = (reference image, modification) of the split's triplets, the reference image itself
  excluded from the gallery. Identity level (``R@K``, ``mAP``): the gallery is collapsed to identities (a
  person's score = its best image) and a query hits when the target identity is among the top K — any image
  of the edited person is a right answer. Exact target (``exact_R@K``): the triplet's own target image must be
  among the top K images, for the triplets whose target image is in the gallery.
- verification: same/different-identity image pairs scored by embedding cosine and by the MLLM's own
  yes/no on the two crops side by side; accuracy/precision/recall/F1 at a threshold, ROC AUC, optional PNGs.
- THI: ``evaluate_thi_dataset`` indexes the split into a temporary embedded store, caches the question-bank
  answers, and reports per-round Rank-1 / mAP / cumulative Hits@10 (``retrieval.thi.evaluate_thi``).

These protocol functions (``evaluate_t2i``, ``evaluate_i2i``, ``evaluate_composed``) also serve the per-epoch
evaluation of ``finetune.train.evaluate``; keep this module's top-level imports to numpy, mllm_embed and
``retrieval.metrics`` (plus the standard library) so finetune may import it.
"""

from __future__ import annotations

import logging
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from mllm_embed.embedder import side_by_side
from mllm_embed.errors import LineupError
from retrieval.metrics import (composed_recall, rank_metrics, recall_at_k, recall_subset_at_k, roc_auc,
                               verification_metrics)

log = logging.getLogger(__name__)

Progress = Callable[[int], None] | None

if TYPE_CHECKING:
    from finetune.data import PersonImage
TASKS = ("t2i", "i2i", "composed", "verify")


@dataclass
class EvalConfig:
    split: str = field(default="test", metadata={"help": "dataset split to evaluate"})
    batch_size: int = field(default=16, metadata={"help": "embedding batch size"})
    ks: tuple[int, ...] = field(default=(1, 5, 10), metadata={"help": "Rank-k / Recall@k cut-offs"})
    pairs: int = field(default=200, metadata={"help": "verification pairs (half same, half different)"})
    threshold: float | None = field(
        default=None, metadata={"help": "cosine threshold; None = best accuracy on the pairs (optimistic)"})
    answer_weight: float = field(default=0.0, metadata={
        "help": "also report text and composed retrieval with answer re-ranking at this weight (asks the MLLM "
                "the question bank about every gallery image; SearchEngine.answer_weight)"})
    mllm_judge: bool = field(default=True, metadata={"help": "also score pairs by the MLLM's yes/no"})
    answers_judge: bool = field(default=True, metadata={
        "help": "also score pairs by the MLLM's answers to the question bank (share answered alike)"})
    seed: int = field(default=0, metadata={"help": "pair sampling seed"})

    def __post_init__(self) -> None:
        if self.pairs < 2:
            raise ValueError(f"pairs must be >= 2, got {self.pairs}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive cut-offs, got {self.ks}")


def encode_gallery(embedder: Any, records: Sequence[PersonImage], batch_size: int = 16, progress: Progress = None):
    return embedder.encode_images([r.image for r in records], batch_size=batch_size, progress=progress)


# --- retrieval tasks --------------------------------------------------------------------------------
def evidence_matrix(embedder, answers: Sequence[dict[str, str]], stated: Sequence[dict[str, str]],
                    vocabulary, reliability=None) -> np.ndarray:
    """(queries, gallery): the `retrieval.judge.evidence` of each gallery image's answers for what each query
    states, answers weighed by ``reliability`` (default: `embedder`'s base's calibration)."""
    from retrieval.judge import answer_reliability, evidence

    reliability = answer_reliability(embedder) if reliability is None else reliability
    return np.array([[evidence(a, s, vocabulary, reliability) for a in answers] for s in stated])


def certain(question_bank: Sequence[dict[str, str]]) -> dict[str, float]:
    """A cache of true answers is trusted as far as `retrieval.judge.evidence` trusts any answer, whatever the
    base's own calibration says."""
    return {q["key"]: 1.0 for q in question_bank}


def evaluate_t2i(embedder, records, image_vecs=None, batch_size=16, ks=(1, 5, 10), progress=None,
                 answers=None, vocabulary=None, answer_weight: float = 0.0, reliability=None) -> dict:
    """Every caption of every image as a query. With an ``answer_weight``, ``answers`` (each record's answers
    to the question bank) and a ``vocabulary``, the ranking is `SearchEngine`'s answer re-ranking over the
    whole gallery: cosine + answer_weight × the answers' evidence for what the caption states (``reliability``:
    see ``evidence_matrix``)."""
    image_vecs = encode_gallery(embedder, records, batch_size) if image_vecs is None else image_vecs
    texts = [(c, r.person_id) for r in records for c in r.captions]
    if not texts:
        raise LineupError("text→image evaluation needs captions: this split has none")
    text_vecs = embedder.encode_text([t for t, _ in texts], batch_size=batch_size, progress=progress)
    sim = text_vecs @ image_vecs.T
    if answer_weight:
        sim += answer_weight * evidence_matrix(embedder, answers, [vocabulary.stated(t) for t, _ in texts], vocabulary,
                                               reliability)
    return rank_metrics(sim, [p for _, p in texts], [r.person_id for r in records], ks=ks)


def evaluate_i2i(embedder, records, image_vecs=None, batch_size=16, ks=(1, 5, 10)) -> dict:
    image_vecs = encode_gallery(embedder, records, batch_size) if image_vecs is None else image_vecs
    pids = [r.person_id for r in records]
    cams = [r.camera_id for r in records]
    if min(cams) < 0:  # cameras unknown (most text-ReID datasets): exclude only the query image itself
        cams = list(range(len(records)))
    return rank_metrics(image_vecs @ image_vecs.T, pids, pids, cams, cams, ks=ks)


def _path_key(path) -> str:
    return str(Path(path).resolve())


def evaluate_composed(embedder, records, triplets, image_vecs=None, batch_size=16, ks=(1, 5, 10),
                      progress=None, answers=None, vocabulary=None, answer_weight: float = 0.0,
                      reliability=None) -> dict:
    """Composed retrieval, both conventions over one similarity matrix (the reference image excluded):

    - identity level (``R@K``, ``mAP``): a query hits at K when the target person's best image is among the
      top K people; ``mAP`` ranks the images, every image of the target person counting as a true match.
      Triplets whose target person has no image in the gallery are skipped (``queries`` / ``skipped``).
    - exact target (``exact_R@K``, ``exact_queries``): the triplet's own target image must be among the top K
      images (CIRR / FashionIQ convention); only triplets whose ``target`` image is in the gallery count, and
      the keys are absent when there is none.

    With an ``answer_weight`` (and ``answers``, ``vocabulary``, ``reliability``: see ``evaluate_t2i``) the
    modification's new values are what the answers are checked against (``Vocabulary.modification``).
    """
    image_vecs = encode_gallery(embedder, records, batch_size) if image_vecs is None else image_vecs
    pids = np.array([r.person_id for r in records])
    people = np.unique(pids)
    column = {_path_key(r.image): j for j, r in enumerate(records)}
    usable = [t for t in triplets if t.target_id in set(people.tolist())]
    if not usable:
        raise LineupError("composed evaluation: no triplet's target person is in this split's gallery")
    vecs = embedder.encode_composed([(t.reference, t.modification) for t in usable],
                                    batch_size=batch_size, progress=progress)
    sim = vecs @ image_vecs.T
    if answer_weight:
        sim += answer_weight * evidence_matrix(embedder, answers,
                                               [vocabulary.modification(t.modification) for t in usable], vocabulary,
                                               reliability)
    for i, t in enumerate(usable):  # the reference image itself is not a candidate (CIRR convention)
        if _path_key(t.reference) in column:
            sim[i, column[_path_key(t.reference)]] = -np.inf
    by_person = np.stack([sim[:, pids == p].max(axis=1) for p in people], axis=1)
    target_ids = [t.target_id for t in usable]
    out = recall_at_k(by_person, np.searchsorted(people, target_ids), ks=ks)
    out["mAP"] = rank_metrics(sim, target_ids, pids, ks=ks)["mAP"]
    exact = [(i, column[_path_key(t.target)]) for i, t in enumerate(usable)
             if t.target and _path_key(t.target) in column]
    out.update(queries=len(usable), skipped=len(triplets) - len(usable))
    if exact:
        rows, cols = map(list, zip(*exact))
        out.update({f"exact_{k}": v for k, v in recall_at_k(sim[rows], np.array(cols), ks=ks).items()})
        out["exact_queries"] = len(exact)
    return out


# --- composed benchmarks (CIRR, FashionIQ) with their official protocols -----------------------------
def _benchmark_sim(embedder, bench: dict, batch_size: int, progress: Progress):
    """(similarity (queries, gallery), gallery column of each name) for a loaded benchmark split."""
    names = [n for n, _ in bench["gallery"]]
    column = {n: j for j, n in enumerate(names)}
    path = dict(bench["gallery"])
    gallery = embedder.encode_images([p for _, p in bench["gallery"]], batch_size=batch_size, progress=progress)
    queries = embedder.encode_composed([(path[q["reference"]], q["caption"]) for q in bench["queries"]],
                                       batch_size=batch_size, progress=progress)
    return queries @ gallery.T, column


def evaluate_cirr(embedder, path: str | Path, split: str = "val", batch_size: int = 16,
                  progress: Progress = None) -> dict:
    """CIRR's protocol: gallery = every image of the split's image_splits file, the reference removed from each
    query's ranking; Recall@1/5/10/50 over it and Recall_subset@1/2/3 over the query's img_set members (the
    reference left out); ``R_avg`` = (R@5 + Rsubset@1) / 2, the figure CIRR papers rank by."""
    from finetune.data.loaders import load_cirr_benchmark

    bench = load_cirr_benchmark(path, split)
    sim, column = _benchmark_sim(embedder, bench, batch_size, progress)
    queries = bench["queries"]
    target = np.array([column[q["target"]] for q in queries])
    reference = np.array([column[q["reference"]] for q in queries])
    out = composed_recall(sim, target, reference, ks=(1, 5, 10, 50))
    subsets = [[column[m] for m in q["members"] if m != q["reference"] and m in column] for q in queries]
    out.update(recall_subset_at_k(sim, target, subsets, ks=(1, 2, 3)))
    out["R_avg"] = (out["R@5"] + out["Rsubset@1"]) / 2
    out.update(queries=len(queries), gallery=len(column), skipped_missing_images=bench["skipped_missing_images"])
    return out


def evaluate_fashioniq(embedder, path: str | Path, split: str = "val", categories: Sequence[str] | None = None,
                       batch_size: int = 16, progress: Progress = None) -> dict:
    """FashionIQ's protocol: per category, gallery = that category's image_splits names (the reference is not
    removed), R@10 and R@50; ``average R@10`` / ``average R@50`` over the categories present."""
    from finetune.data.loaders import FASHIONIQ_CATEGORIES, load_fashioniq_benchmark

    root = Path(path)
    categories = categories or [c for c in FASHIONIQ_CATEGORIES
                                if (root / "captions" / f"cap.{c}.{split}.json").is_file()]
    if not categories:
        raise LineupError(f"{root}: no captions/cap.<dress|shirt|toptee>.{split}.json — is this FashionIQ?")
    out: dict[str, float] = {}
    for category in categories:
        bench = load_fashioniq_benchmark(root, category, split)
        sim, column = _benchmark_sim(embedder, bench, batch_size, progress)
        recall = recall_at_k(sim, np.array([column[q["target"]] for q in bench["queries"]]), ks=(10, 50))
        out.update({f"{category} {k}": v for k, v in recall.items()})
        out[f"{category} queries"] = len(bench["queries"])
    for k in ("R@10", "R@50"):
        out[f"average {k}"] = float(np.mean([out[f"{c} {k}"] for c in categories]))
    return out


def evaluate_composed_benchmark(embedder, path: str | Path, split: str = "val", batch_size: int = 16,
                                progress: Progress = None) -> dict:
    """`evaluate_cirr` or `evaluate_fashioniq`, by the folder's layout (`split` "test": "val", since both
    benchmarks hide their test targets)."""
    from finetune.data.loaders import composed_benchmark_format

    fmt = composed_benchmark_format(path)
    split = "val" if split == "test" else split
    if fmt == "cirr":
        return evaluate_cirr(embedder, path, split, batch_size, progress)
    if fmt == "fashioniq":
        return evaluate_fashioniq(embedder, path, split, batch_size=batch_size, progress=progress)
    raise LineupError(f"{path}: not a CIRR or FashionIQ folder (captions/ + image_splits/)")


# --- verification -----------------------------------------------------------------------------------
def sample_pairs(records, n: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """n (i, j, same) index pairs: half same-identity (two different images), half different identities."""
    rng = random.Random(seed)
    by_pid: dict[Any, list[int]] = {}
    for i, r in enumerate(records):
        by_pid.setdefault(r.person_id, []).append(i)
    multi = [p for p, idx in by_pid.items() if len(idx) >= 2]
    if not multi or len(by_pid) < 2:
        raise LineupError("verification needs >= 2 people and someone with >= 2 images in the split")
    pairs = []
    for _ in range(n // 2):
        i, j = rng.sample(by_pid[rng.choice(multi)], 2)
        pairs.append((i, j, 1))
    people = list(by_pid)
    for _ in range(n - n // 2):
        a, b = rng.sample(people, 2)
        pairs.append((rng.choice(by_pid[a]), rng.choice(by_pid[b]), 0))
    return pairs


def best_threshold(scores, labels) -> float:
    """The cut between sorted scores that maximises accuracy."""
    s = np.sort(np.unique(scores))
    cuts = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-6]])
    acc = [verification_metrics(scores, labels, c)["accuracy"] for c in cuts]
    return float(cuts[int(np.argmax(acc))])


def evaluate_verification(embedder, records, image_vecs=None, config: EvalConfig | None = None,
                          plots: str | Path | None = None, progress: Progress = None,
                          answers: dict[str, dict[str, str]] | None = None) -> dict:
    """Same person or not, over ``sample_pairs``: the embedding cosine, the MLLM's direct yes/no
    (``verify_question`` on the two crops side by side) and its answers judge (share of the question bank two
    crops answer alike; ``answers``: image path → answers already asked, the rest are asked now)."""
    config = config or EvalConfig()
    image_vecs = encode_gallery(embedder, records, config.batch_size) if image_vecs is None else image_vecs
    pairs = sample_pairs(records, config.pairs, config.seed)
    labels = np.array([same for _, _, same in pairs])
    cosine = np.array([float(image_vecs[i] @ image_vecs[j]) for i, j, _ in pairs])
    threshold = best_threshold(cosine, labels) if config.threshold is None else config.threshold
    out = {"pairs": len(pairs), "embedding": {**verification_metrics(cosine, labels, threshold),
                                              "auc": roc_auc(cosine, labels), "threshold": threshold,
                                              "threshold_source": "given" if config.threshold is not None
                                              else "best accuracy on these pairs"}}
    scores = {"embedding cosine": cosine}
    if config.mllm_judge:
        said = []
        for i, j, _ in pairs:
            answer = embedder.answer(side_by_side(records[i].image, records[j].image),
                                     embedder.config.verify_question)
            said.append(1.0 if str(answer).strip().lower().startswith("yes") else 0.0)
            if progress:
                progress(1)
        said = np.array(said)
        out["mllm"] = {**verification_metrics(said, labels, 0.5), "auc": roc_auc(said, labels),
                       "yes_rate": float(said.mean())}
        scores["MLLM yes/no"] = said
    if config.answers_judge:
        from finetune.data.world import QUESTION_BANK
        from retrieval.judge import bank_answerer, gallery_answers, same_score

        images = sorted({records[i].image for pair in pairs for i in pair[:2]})
        answers = gallery_answers(bank_answerer(embedder), images, QUESTION_BANK, answers, progress)
        alike = np.array([same_score(answers[records[i].image], answers[records[j].image]) for i, j, _ in pairs])
        cut = best_threshold(alike, labels)
        out["mllm_answers"] = {**verification_metrics(alike, labels, cut), "auc": roc_auc(alike, labels),
                               "threshold": cut, "threshold_source": "best accuracy on these pairs",
                               "questions": len(QUESTION_BANK)}
        scores["MLLM answers"] = alike
    if plots is not None:
        out["plots"] = [str(p) for p in save_verification_plots(scores, labels, cosine, threshold, Path(plots))]
    return out


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-np.asarray(scores), kind="stable")
    y = np.asarray(labels, dtype=bool)[order]
    s = np.asarray(scores)[order]
    last = np.r_[np.diff(s) != 0, True]  # one point per distinct threshold
    tpr = np.r_[0.0, np.cumsum(y)[last] / max(1, y.sum())]
    fpr = np.r_[0.0, np.cumsum(~y)[last] / max(1, (~y).sum())]
    return fpr, tpr


def save_verification_plots(scores: dict[str, np.ndarray], labels, cosine, threshold, out_dir: Path) -> list[Path]:
    """ROC curves of every scorer and a histogram of same/different cosine scores, drawn with PIL."""
    from PIL import Image, ImageDraw

    out_dir.mkdir(parents=True, exist_ok=True)
    size, pad = 360, 40
    colors = [(31, 119, 180), (214, 39, 40), (44, 160, 44)]
    img = Image.new("RGB", (size + 2 * pad, size + 2 * pad), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([pad, pad, pad + size, pad + size], outline="black")
    d.line([pad, pad + size, pad + size, pad], fill=(180, 180, 180))
    for n, ((name, s), color) in enumerate(zip(scores.items(), colors)):
        fpr, tpr = roc_curve(s, labels)
        d.line([(pad + f * size, pad + size - t * size) for f, t in zip(fpr, tpr)], fill=color, width=2)
        d.text((pad + 8, pad + 8 + 14 * n), f"{name}: AUC {roc_auc(s, labels):.3f}", fill=color)
    d.text((pad + size // 2 - 40, pad + size + 12), "false positive rate", fill="black")
    d.text((4, pad - 16), "true positive rate", fill="black")
    roc_path = out_dir / "verification_roc.png"
    img.save(roc_path)

    bins = 30
    edges = np.linspace(min(cosine.min(), threshold) - 1e-6, max(cosine.max(), threshold) + 1e-6, bins + 1)
    lab = np.asarray(labels, dtype=bool)
    same, diff = np.histogram(cosine[lab], edges)[0], np.histogram(cosine[~lab], edges)[0]
    top = max(1, same.max(), diff.max())
    img = Image.new("RGB", (size + 2 * pad, size // 2 + 2 * pad), "white")
    d = ImageDraw.Draw(img)
    h, w = size // 2, size / bins
    for b in range(bins):
        for count, color, off in ((diff[b], colors[1], 0), (same[b], colors[0], w / 2)):
            x = pad + b * w + off
            d.rectangle([x, pad + h - h * count / top, x + w / 2 - 1, pad + h], fill=color)
    tx = pad + (threshold - edges[0]) / (edges[-1] - edges[0]) * size
    d.line([tx, pad, tx, pad + h], fill="black", width=1)
    d.text((pad, 8), f"cosine: same (blue) vs different (red); threshold {threshold:.3f}", fill="black")
    d.text((pad, pad + h + 8), f"{edges[0]:.2f}", fill="black")
    d.text((pad + size - 30, pad + h + 8), f"{edges[-1]:.2f}", fill="black")
    hist_path = out_dir / "verification_hist.png"
    img.save(hist_path)
    return [roc_path, hist_path]


# --- datasets on disk --------------------------------------------------------------------------------
def evaluate_dataset(embedder, path: str | Path, tasks: Sequence[str] = TASKS, config: EvalConfig | None = None,
                     plots: str | Path | None = None, progress: Progress = None,
                     answers: dict[str, dict[str, str]] | None = None) -> dict[str, dict]:
    """Run the chosen tasks on ``path`` (a world folder or a real dataset); one metrics dict per task. With
    ``config.answer_weight``, also ``t2i_answers`` / ``composed_answers`` (answer re-ranking), from ``answers``
    (image path → answers to the question bank, e.g. a collection's cache) or asked now."""
    config = config or EvalConfig()
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise LineupError(f"unknown eval task(s) {sorted(unknown)}; choose from {list(TASKS)}")
    from finetune.data.loaders import composed_benchmark_format

    if composed_benchmark_format(path):  # CIRR / FashionIQ: composed retrieval only, with their own protocol
        if set(tasks) - {"composed"} and set(tasks) != set(TASKS):
            raise LineupError(f"{path}: a composed-retrieval benchmark has no person ids or captions per image; "
                              "use --task composed")
        return {"composed": evaluate_composed_benchmark(embedder, path, config.split, config.batch_size, progress)}
    from finetune.data import load_split, load_triplets

    records = load_split(path, config.split, required=True)
    vecs = encode_gallery(embedder, records, config.batch_size, progress)
    kw = dict(image_vecs=vecs, batch_size=config.batch_size, ks=config.ks)
    out: dict[str, dict] = {}
    if "t2i" in tasks:
        out["t2i"] = evaluate_t2i(embedder, records, progress=progress, **kw)
    if "i2i" in tasks:
        out["i2i"] = evaluate_i2i(embedder, records, **kw)
    if "composed" in tasks:
        try:
            triplets = load_triplets(path, config.split)
        except (LineupError, FileNotFoundError) as exc:
            log.warning("composed evaluation skipped: %s", exc)
            triplets = []
        if triplets:
            out["composed"] = evaluate_composed(embedder, records, triplets, progress=progress, **kw)
    if config.answer_weight and {"t2i", "composed"} & set(tasks):
        from finetune.data.world import QUESTION_BANK
        from retrieval.judge import bank_answerer, gallery_answers, world_vocabulary

        answers = gallery_answers(bank_answerer(embedder), [r.image for r in records], QUESTION_BANK, answers)
        kw |= {"answers": [answers[r.image] for r in records], "answer_weight": config.answer_weight,
               "vocabulary": world_vocabulary()}
        if "t2i" in tasks:
            out["t2i_answers"] = evaluate_t2i(embedder, records, **kw)
        if "composed" in out:
            out["composed_answers"] = evaluate_composed(embedder, records, triplets, **kw)
    if "verify" in tasks:
        out["verify"] = evaluate_verification(embedder, records, vecs, config, plots, progress, answers)
    return out


def evaluate_thi_dataset(embedder, path: str | Path, question_bank: Sequence[dict[str, str]], thi_config=None,
                         split: str = "test", user: str = "simulated", cache: str = "mllm",
                         max_queries: int | None = 100, batch_size: int = 16, progress: Progress = None,
                         answers: dict[str, dict[str, str]] | None = None):
    """Per-round THI metrics on a dataset split, in a temporary embedded store.

    user: "simulated" answers from ground-truth attributes (via finetune.data.world.answer_from_attributes;
    falls back to "mllm" when the dataset has none) or "mllm" = the MLLM looking at the target's image.
    cache: "mllm" caches the MLLM's own answers per gallery image (the realistic setting; those in ``answers``,
    image path → answers already asked, are not asked again) or "truth".
    Queries: the first caption of the first ``max_queries`` images.
    """
    from finetune.data import load_split
    from finetune.data.world import answer_from_attributes
    from retrieval.engine import SearchEngine
    from retrieval.judge import bank_answerer, world_vocabulary
    from retrieval.store import open_store
    from retrieval.thi import THIConfig, evaluate_thi

    thi_config = thi_config or THIConfig()
    records = load_split(path, split, required=True)
    by_image = {r.image: r for r in records}

    def truth(image: str, question: str) -> str:
        key = next(q["key"] for q in question_bank if q["question"] == question)
        attrs = by_image[image].attributes
        if attrs is None:
            raise LineupError(f"{path}: no ground-truth attributes; use cache='mllm'")
        return answer_from_attributes(attrs, key)

    key_of = {q["question"]: q["key"] for q in question_bank}
    ask = bank_answerer(embedder)

    def known_or_asked(image: str, question: str) -> str:
        return ((answers or {}).get(image) or {}).get(key_of[question]) or ask(image, question)

    def answerer_for(query: dict):
        attrs = query["record"].attributes
        if user == "simulated" and attrs is not None:
            return lambda q: answer_from_attributes(attrs, q["key"])
        return lambda q: ask(query["record"].image, q["question"])

    queries = [{"text": r.captions[0], "person_id": r.person_id, "record": r}
               for r in records[: max_queries or len(records)] if r.captions]
    with tempfile.TemporaryDirectory() as tmp, open_store(path=Path(tmp) / "thi") as store:
        engine = SearchEngine(embedder, store, "thi", reliability=certain(question_bank) if cache == "truth" else None)
        engine.index_images(records, batch_size=batch_size)
        engine.cache_answers(question_bank, answer_fn=truth if cache == "truth" else known_or_asked)
        return evaluate_thi(engine, queries, question_bank, thi_config,
                            answerer_for=answerer_for if thi_config.mode == "interactive" else None,
                            progress=progress, vocabulary=world_vocabulary())


def evaluate_dialogue_dataset(embedder, path: str | Path, question_bank: Sequence[dict[str, str]], vocabulary,
                              thi_config=None, split: str = "test", gallery_split: str | None = None,
                              cache: str = "mllm", strategies: Sequence[str] = (), max_queries: int | None = 60,
                              batch_size: int = 16, progress: Progress = None) -> dict[str, Any]:
    """The simulated user's whole dialogue on a world split (``retrieval.thi.evaluate_dialogue``), in a
    temporary embedded store: (a) questions only, (b) + feedback on the shown top 5, (c) + filters from its
    true attributes; (a) again without listening (questions the description answers are asked too), and (b)
    once per feedback strategy in ``strategies``.

    Queries: the first caption of the first ``max_queries`` images of ``split``, answers from ground truth
    (``finetune.data.world.answer_from_attributes``). Gallery: ``split``'s images, or ``gallery_split``'s
    ("all" = every split: the other people become distractors). cache: "mllm" caches the MLLM's own answers
    per gallery image (what a deployment has) or "truth".
    """
    from finetune.data import load_split
    from finetune.data.world import answer_from_attributes
    from retrieval.engine import SearchEngine
    from retrieval.store import open_store
    from retrieval.thi import VARIANTS, THIConfig, evaluate_dialogue

    thi_config = thi_config or THIConfig()
    records = load_split(path, split, required=True)
    gallery = load_split(path, gallery_split) if gallery_split and gallery_split != split else records
    keys = [q["key"] for q in question_bank]

    def truth(attrs: dict | None) -> dict[str, str]:
        return {k: answer_from_attributes(attrs, k) for k in keys} if attrs else {}

    by_image = {r.image: truth(r.attributes) for r in gallery}
    if not all(by_image.values()):
        raise LineupError(f"{path}: the dialogue benchmark needs ground-truth attributes (a synthetic world)")
    key_of = {q["question"]: q["key"] for q in question_bank}
    queries = [{"text": r.captions[0], "person_id": r.person_id, "answers": truth(r.attributes)}
               for r in records[: max_queries or len(records)] if r.captions]
    answerer_for = lambda query: (lambda q: query["answers"][q["key"]])  # noqa: E731
    seen = lambda hit: truth(hit.payload.get("attributes"))  # noqa: E731
    out: dict[str, Any] = {"queries": len(queries), "gallery": len(gallery), "split": split,
                           "gallery_split": gallery_split or split, "cache": cache, "rounds": thi_config.rounds}
    with tempfile.TemporaryDirectory() as tmp, open_store(path=Path(tmp) / "dialogue") as store:
        engine = SearchEngine(embedder, store, "dialogue",
                              reliability=certain(question_bank) if cache == "truth" else None)
        engine.index_images(gallery, batch_size=batch_size)
        engine.cache_answers(question_bank, answer_fn=(lambda img, q: by_image[img][key_of[q]]) if cache == "truth"
                             else None)
        cached = [h.payload["answers"] for h in store.scroll("dialogue")]
        truths = [by_image[h.payload["image"]] for h in store.scroll("dialogue")]
        out["cache_accuracy"] = 100.0 * float(np.mean([c[k] == t[k] for c, t in zip(cached, truths) for k in keys]))

        def run(variant: str, config) -> dict:
            return evaluate_dialogue(engine, queries, question_bank, config, answerer_for, variant=variant,
                                     vocabulary=vocabulary, seen=seen, progress=progress)

        out["variants"] = {v: run(v, thi_config) for v in VARIANTS}
        from dataclasses import replace

        out["no_listen"] = run("questions", replace(thi_config, listen=False))
        out["strategies"] = {s: run("feedback", replace(thi_config, feedback_strategy=s)) for s in strategies}
    return out
