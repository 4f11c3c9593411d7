"""Retrieval metrics as pure functions over numpy arrays (no model, no database).

Ranking follows the standard ReID protocol (torchreid `evaluate_rank`): gallery sorted by descending
similarity, ties broken by gallery order (stable sort); with cameras given, gallery items of the query's
person seen by the query's camera are removed for that query; queries left without any true match are
skipped and counted. Ranking metrics are percentages; verification metrics and AUC are fractions in [0, 1].
"""

from __future__ import annotations

import numpy as np

from mllm_embed.errors import LineupError


def _ranked(sim: np.ndarray) -> np.ndarray:
    """Gallery indices per query, best first; equal scores keep gallery order."""
    return np.argsort(-np.asarray(sim, dtype=np.float64), axis=1, kind="stable")


def rank_metrics(sim, query_pids, gallery_pids, query_cams=None, gallery_cams=None, ks=(1, 5, 10)) -> dict:
    """CMC Rank-k, mAP and mINP (in %) for a (queries, gallery) similarity matrix.

    Returns {"R1", "R5", "R10" (one per k in ks), "mAP", "mINP", "queries", "skipped"} where `queries`
    counts the evaluated queries and `skipped` those with no valid match in the gallery.
    """
    sim = np.asarray(sim)
    qp, gp = np.asarray(query_pids), np.asarray(gallery_pids)
    if sim.ndim != 2 or sim.shape != (len(qp), len(gp)):
        raise ValueError(f"sim has shape {sim.shape}, expected (len(query_pids), len(gallery_pids)) = "
                         f"({len(qp)}, {len(gp)})")
    if (query_cams is None) != (gallery_cams is None):
        raise ValueError("give both query_cams and gallery_cams, or neither")
    order = _ranked(sim)
    matches = gp[order] == qp[:, None]  # (q, g) in ranked order
    if query_cams is not None:
        qc, gc = np.asarray(query_cams), np.asarray(gallery_cams)
        keep = ~((gp[order] == qp[:, None]) & (gc[order] == qc[:, None]))
    else:
        keep = np.ones_like(matches, dtype=bool)
    cmc_hits = {k: 0 for k in ks}
    aps, inps = [], []
    for m, kp in zip(matches, keep):
        m = m[kp]
        pos = np.flatnonzero(m)  # 0-based ranks of the true matches
        if len(pos) == 0:
            continue
        for k in ks:
            cmc_hits[k] += int(pos[0] < k)
        aps.append(np.mean(np.arange(1, len(pos) + 1) / (pos + 1)))  # precision at each hit
        inps.append(len(pos) / (pos[-1] + 1))  # hits / rank of the hardest hit
    n = len(aps)
    if n == 0:
        raise LineupError("no query has a true match in the gallery (after same-camera exclusion): check that "
                          "query and gallery share person ids")
    out = {f"R{k}": 100.0 * cmc_hits[k] / n for k in ks}
    out.update(mAP=100.0 * float(np.mean(aps)), mINP=100.0 * float(np.mean(inps)), queries=n, skipped=len(qp) - n)
    return out


def recall_at_k(sim, target_index, ks=(1, 5, 10)) -> dict:
    """Composed retrieval Recall@K (in %): query i is a hit at k when gallery item target_index[i] is among
    its k best (ties broken by gallery order). Returns {"R@1", "R@5", "R@10"} for the given ks."""
    sim = np.asarray(sim)
    target = np.asarray(target_index)
    if sim.ndim != 2 or target.shape != (sim.shape[0],):
        raise ValueError(f"sim {sim.shape} and target_index {target.shape} need shapes (q, g) and (q,)")
    if len(target) and (target.min() < 0 or target.max() >= sim.shape[1]):
        raise ValueError("target_index has entries outside the gallery")
    rank = np.argmax(_ranked(sim) == target[:, None], axis=1)
    return {f"R@{k}": 100.0 * float(np.mean(rank < k)) for k in ks}


def _binary(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s, y = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 (or booleans)")
    return s, y.astype(bool)


def verification_metrics(scores, labels, threshold: float) -> dict:
    """Pair verification at `threshold` (score >= threshold → "same person"): accuracy, precision, recall,
    f1 as fractions; precision/recall/f1 are 0.0 when undefined (no predicted / no true positives)."""
    s, y = _binary(scores, labels)
    pred = s >= threshold
    tp, fp, fn = int(np.sum(pred & y)), int(np.sum(pred & ~y)), int(np.sum(~pred & y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": float(np.mean(pred == y)) if len(y) else 0.0, "precision": precision, "recall": recall,
            "f1": f1}


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney U) statistic; tied scores get their average
    rank, so a tie between a positive and a negative counts one half."""
    s, y = _binary(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs at least one positive and one negative label")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    start = np.cumsum(counts) - counts  # 0-based rank where each distinct score starts
    avg_rank = start + (counts + 1) / 2.0  # 1-based average rank of each distinct score
    rank_sum = avg_rank[inverse][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def composed_recall(sim, target_index, exclude_index=None, ks=(1, 5, 10, 50)) -> dict:
    """Recall@K (in %) of composed queries against one gallery: query i hits at k when gallery item
    target_index[i] is among its k best, gallery item exclude_index[i] (the reference image; -1 for none) removed
    first (CIRR's protocol). Ties keep gallery order. Returns {"R@1", ...} for the given ks."""
    sim = np.array(sim, dtype=np.float64)
    if exclude_index is not None:
        exclude = np.asarray(exclude_index)
        if exclude.shape != (sim.shape[0],):
            raise ValueError(f"exclude_index {exclude.shape} needs shape ({sim.shape[0]},)")
        rows = np.flatnonzero(exclude >= 0)
        if np.any(exclude[rows] == np.asarray(target_index)[rows]):
            raise ValueError("a query's excluded (reference) item is its target")
        sim[rows, exclude[rows]] = -np.inf
    return recall_at_k(sim, target_index, ks=ks)


def recall_subset_at_k(sim, target_index, subset_index, ks=(1, 2, 3)) -> dict:
    """CIRR's Recall_subset@K (in %): each query is ranked only against its own subset of gallery items
    (`subset_index[i]`: gallery indices of its img_set members, the reference already left out); a hit at k
    when its target is among the subset's k best. Ties keep the subset's order. Returns {"Rsubset@1", ...}."""
    sim = np.asarray(sim, dtype=np.float64)
    target = np.asarray(target_index)
    if len(subset_index) != sim.shape[0] or target.shape != (sim.shape[0],):
        raise ValueError("subset_index and target_index need one entry per query (row of sim)")
    hits = {k: 0 for k in ks}
    for i, members in enumerate(subset_index):
        members = list(members)
        if target[i] not in members:
            raise ValueError(f"query {i}: its target is not in its subset")
        order = np.argsort(-sim[i, members], kind="stable")
        rank = [members[j] for j in order].index(target[i])
        for k in ks:
            hits[k] += int(rank < k)
    n = max(1, sim.shape[0])
    return {f"Rsubset@{k}": 100.0 * hits[k] / n for k in ks}
