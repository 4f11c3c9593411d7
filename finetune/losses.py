"""Contrastive and identity losses over L2-normalised embeddings.

All functions take embeddings of shape (n, d) (already normalised by the embedder) and integer person ids
of shape (n,). Two samples of the same identity are never pushed apart: in the cross-modal InfoNCE they
count as positives (the loss is −log of the softmax mass on all positives), in the identity losses they are the positives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from finetune.data.text import words

IDENTITY_LOSSES = ("supcon", "triplet")


class Temperature(nn.Module):
    """InfoNCE temperature τ, learnable as a log-scale (CLIP style, clamped to τ ≥ 0.01) or fixed."""

    def __init__(self, init: float = 0.05, learnable: bool = True):
        super().__init__()
        if init <= 0:
            raise ValueError(f"temperature must be > 0, got {init}")
        log_scale = torch.tensor(math.log(1.0 / init))
        if learnable:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self) -> torch.Tensor:
        """The logit scale 1/τ."""
        return self.log_scale.clamp(max=math.log(100.0)).exp()


def _same_id(pids_a: torch.Tensor, pids_b: torch.Tensor) -> torch.Tensor:
    return pids_a.view(-1, 1) == pids_b.view(1, -1)


def _multi_positive_ce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """−log of the softmax mass on each row's positives (rows need ≥ 1 positive): 0 when all mass is there."""
    return (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positives, float("-inf")), 1)).mean()


def contrastive_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor | float,
    pids: torch.Tensor | None = None,
    extra_pids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bidirectional InfoNCE between row-aligned embeddings a[i] ↔ b[i] (image↔caption, composed↔target).

    With `pids`, every pair of the same identity is a positive instead of an in-batch negative (a caption of
    person 3 is never pushed away from another image of person 3). For composed pairs pass the identities of
    the targets: two queries that both describe person 7 share their positives. Rows of `b` after the first
    len(a) are extra candidates for `a` only (the reference images of composed queries): a→b ranks them, b→a
    skips them; with `extra_pids` (and `pids`) one of the same identity as a row of `a` is a positive of that
    row, every other one a negative.
    """
    return _bidirectional_ce(scale * a @ b.t(), pids, extra_pids)


def _bidirectional_ce(logits: torch.Tensor, pids: torch.Tensor | None,
                      extra_pids: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE both ways over (n, m >= n) logits whose first n columns hold the pairs on their diagonal (same
    identity: positives too); columns past n are ranked by the rows only, positives where `extra_pids` match."""
    n = len(logits)
    positives = torch.zeros_like(logits, dtype=torch.bool)
    positives[:, :n] = torch.eye(n, dtype=torch.bool, device=logits.device)
    if pids is not None:
        positives[:, :n] |= _same_id(pids, pids)
        if extra_pids is not None and logits.shape[1] > n:
            positives[:, n:] = _same_id(pids, extra_pids)
    return 0.5 * (_multi_positive_ce(logits, positives) + _multi_positive_ce(logits[:, :n].t(), positives[:, :n].t()))


def _centred(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """States minus their mean over the masked positions of the batch (hidden states share a large common
    direction that otherwise dominates every cosine)."""
    return h - h[mask].mean(0)


def word_patch_similarity(text_h: torch.Tensor, text_mask: torch.Tensor, image_h: torch.Tensor,
                          image_mask: torch.Tensor) -> torch.Tensor:
    """For every text a, image b and token t of a: max_j cos(t, patch j of b), shape (n_text, n_image, L_text).

    Token states (n, L, h) with boolean masks (n, L) of the positions that count (caption words, image
    patches); values at masked-out text positions are meaningless. NAM's noise is r_i = 1 − this on (a, a)."""
    t = F.normalize(text_h.float(), dim=-1)
    v = F.normalize(image_h.float(), dim=-1)
    sim = torch.einsum("ath,bph->abtp", t, v)
    return sim.masked_fill(~image_mask[None, :, None, :], float("-inf")).amax(-1)


def word_patch_loss(text_h: torch.Tensor, text_mask: torch.Tensor, image_h: torch.Tensor, image_mask: torch.Tensor,
                    scale: torch.Tensor | float, pids: torch.Tensor | None = None) -> torch.Tensor:
    """Fine-grained alignment (FILIP-style late interaction): a caption scores an image by the mean over its words
    of each word's best-matching patch; bidirectional InfoNCE over those scores for row-aligned pairs. Trains
    the word and patch states NAM compares, so a word no patch supports stands out. States are centred on
    the batch mean of their kind first (hidden states share a large common direction)."""
    sim = word_patch_similarity(_centred(text_h, text_mask), text_mask, _centred(image_h, image_mask),
                                image_mask).masked_fill(~text_mask[:, None, :], 0.0)
    scores = sim.sum(-1) / text_mask.sum(-1, keepdim=True).clamp(min=1)
    return _bidirectional_ce(scale * scores, pids)


def word_grounding_loss(text_h: torch.Tensor, text_mask: torch.Tensor, image_h: torch.Tensor,
                        image_mask: torch.Tensor, positives: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Word-level grounding: each caption token ranks the batch's images by its best-matching patch; InfoNCE with
    `positives` (n_text, L, n_image), e.g. from `caption_word_positives`. Tokens every image supports ("a",
    "person") carry no signal and are skipped. Trains exactly what NAM reads: a word's best patch is close in
    images that show it and far in those that don't. States are centred as in `word_patch_loss`."""
    sim = word_patch_similarity(_centred(text_h, text_mask), text_mask, _centred(image_h, image_mask),
                                image_mask).permute(0, 2, 1)  # (n_text, L, n_image)
    rows = text_mask & ~positives.all(-1)
    if not rows.any():
        return sim.sum() * 0.0
    return _multi_positive_ce(scale * sim[rows], positives[rows])


def caption_word_positives(captions: Sequence[str], word_ids: torch.Tensor, image_texts: Sequence[str] | None = None,
                           pids: torch.Tensor | None = None) -> torch.Tensor:
    """(n, L, n) booleans for `word_grounding_loss`: token t of caption a (word index word_ids[a, t], −1 for
    none) is positive for image b when b's text (`image_texts[b]`, e.g. all its captions; default its caption in
    the batch) has the same word, b is a's own image or shows the same person."""
    caption_words = [words(c) for c in captions]
    known = [set(words(t)) for t in (image_texts or captions)]
    vocab = {w: i for i, w in enumerate(sorted({w for ws in caption_words for w in ws}))}
    has = torch.zeros(len(captions), len(vocab) + 1, dtype=torch.bool)
    for b, ws in enumerate(known):
        has[b, [vocab[w] for w in ws if w in vocab]] = True
    token_vocab = torch.full(word_ids.shape, len(vocab), dtype=torch.long)  # the last column: no word
    for a, ws in enumerate(caption_words):
        ids = word_ids[a].cpu()
        ok = (ids >= 0) & (ids < len(ws))
        token_vocab[a, ok] = torch.tensor([vocab[ws[i]] for i in ids[ok].tolist()], dtype=torch.long)
    pos = has.t()[token_vocab]  # (n, L, n)
    same = torch.eye(len(captions), dtype=torch.bool) if pids is None else _same_id(pids.cpu(), pids.cpu())
    return (pos | same[:, None, :]).to(word_ids.device)


def supcon_loss(emb: torch.Tensor, pids: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020): each sample against the other samples of the batch,
    all images of the same identity are positives. Anchors without a positive in the batch are skipped."""
    n = len(emb)
    self_mask = torch.eye(n, dtype=torch.bool, device=emb.device)
    logits = (emb @ emb.t() / temperature).masked_fill(self_mask, float("-inf"))
    positives = _same_id(pids, pids) & ~self_mask
    has_pos = positives.any(1)
    if not has_pos.any():
        return emb.sum() * 0.0
    log_prob = F.log_softmax(logits, dim=1).masked_fill(self_mask, 0.0)
    per_anchor = -(log_prob * positives).sum(1) / positives.sum(1).clamp(min=1)
    return per_anchor[has_pos].mean()


def batch_hard_triplet_loss(emb: torch.Tensor, pids: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) on cosine distance: for each anchor the farthest positive
    and the closest negative. Anchors lacking a positive or a negative in the batch are skipped."""
    dist = 1.0 - emb @ emb.t()
    same = _same_id(pids, pids)
    self_mask = torch.eye(len(emb), dtype=torch.bool, device=emb.device)
    pos_mask, neg_mask = same & ~self_mask, ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    if not valid.any():
        return emb.sum() * 0.0
    hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).max(1).values
    hardest_neg = dist.masked_fill(~neg_mask, float("inf")).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


def identity_loss(kind: str, emb: torch.Tensor, pids: torch.Tensor, temperature: float = 0.1,
                  margin: float = 0.3) -> torch.Tensor:
    """The identity loss on image embeddings named by `kind` ("supcon" or "triplet")."""
    if kind == "supcon":
        return supcon_loss(emb, pids, temperature)
    if kind == "triplet":
        return batch_hard_triplet_loss(emb, pids, margin)
    raise ValueError(f"identity loss must be one of {IDENTITY_LOSSES}, got {kind!r}")
