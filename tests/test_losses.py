import math

import pytest
import torch
import torch.nn.functional as F

from finetune.losses import (
    Temperature,
    batch_hard_triplet_loss,
    caption_word_positives,
    contrastive_loss,
    identity_loss,
    supcon_loss,
    word_grounding_loss,
    word_patch_loss,
    word_patch_similarity,
)


def _unit(x):
    return F.normalize(torch.as_tensor(x, dtype=torch.float32), dim=-1)


def test_contrastive_equals_clip_loss_when_identities_distinct():
    g = torch.Generator().manual_seed(0)
    a, b = _unit(torch.randn(6, 8, generator=g)), _unit(torch.randn(6, 8, generator=g))
    pids = torch.arange(6)
    logits = 10.0 * a @ b.t()
    clip = 0.5 * (F.cross_entropy(logits, pids) + F.cross_entropy(logits.t(), pids))
    assert torch.allclose(contrastive_loss(a, b, 10.0, pids), clip, atol=1e-6)
    assert torch.allclose(contrastive_loss(a, b, 10.0), clip, atol=1e-6)


def test_same_identity_is_never_a_negative():
    # rows 0 and 1 are two images (and captions) of the same person: they are identical embeddings
    a = _unit([[1, 0, 0], [1, 0, 0], [0, 1, 0]])
    without_ids = contrastive_loss(a, a, 20.0)
    with_ids = contrastive_loss(a, a, 20.0, torch.tensor([5, 5, 9]))
    # without ids the duplicate is a hard negative: loss ≈ (2·log 2)/3; with ids it is a positive: ≈ 0
    assert without_ids.item() == pytest.approx(2 * math.log(2) / 3, abs=1e-3)
    assert with_ids.item() < 1e-3


def test_extra_negatives_count_for_a_only():
    g = torch.Generator().manual_seed(2)
    a, b = _unit(torch.randn(4, 8, generator=g)), _unit(torch.randn(4, 8, generator=g))
    extra = _unit(torch.randn(5, 8, generator=g))
    pids = torch.arange(4)
    logits = 10.0 * a @ torch.cat([b, extra]).t()
    # a→b ranks each row's pair against all 9 texts; b→a ranks images for the 4 paired texts only
    expected = 0.5 * (F.cross_entropy(logits, pids) + F.cross_entropy(logits[:, :4].t(), pids))
    assert torch.allclose(contrastive_loss(a, torch.cat([b, extra]), 10.0, pids), expected, atol=1e-6)
    # an extra text identical to a's pair is a negative, so the loss rises above the square one
    assert contrastive_loss(a, torch.cat([b, b[:1]]), 10.0, pids) > contrastive_loss(a, b, 10.0, pids)


def test_extra_candidate_of_the_rows_identity_is_a_positive():
    # query 0 targets person 7; the extra candidate (a reference image) shows person 7 too: with extra_pids it
    # is a positive (loss ≈ 0), without them a negative as close as the pair (loss ≈ log 2 for that row)
    q = _unit([[1, 0], [0, 1]])
    t = _unit([[1, 0], [0, 1]])
    extra = _unit([[1, 0]])
    with_ids = contrastive_loss(q, torch.cat([t, extra]), 20.0, torch.tensor([7, 8]), torch.tensor([7]))
    without = contrastive_loss(q, torch.cat([t, extra]), 20.0, torch.tensor([7, 8]), torch.tensor([9]))
    assert with_ids.item() < 1e-3 and without.item() > 0.1


def test_contrastive_target_pids_for_composed_pairs():
    # composed query 0 targets person 7, query 1 also targets person 7 (another image): both are positives
    q = _unit([[1, 0], [1, 0]])
    t = _unit([[1, 0], [1, 0]])
    loss = contrastive_loss(q, t, 20.0, torch.tensor([7, 7]))
    assert loss.item() < 1e-3


def test_contrastive_gradient_aligns_pairs():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(8, 16, generator=g, requires_grad=True)
    b = torch.randn(8, 16, generator=g, requires_grad=True)
    opt = torch.optim.SGD([a, b], lr=0.5)
    losses = []
    for _ in range(50):
        loss = contrastive_loss(F.normalize(a, dim=1), F.normalize(b, dim=1), 10.0, torch.arange(8))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    sim = F.normalize(a, dim=1) @ F.normalize(b, dim=1).t()
    assert (sim.argmax(1) == torch.arange(8)).all()


def test_temperature_learnable_or_fixed():
    learnable, fixed = Temperature(0.05, learnable=True), Temperature(0.05, learnable=False)
    assert learnable().item() == pytest.approx(20.0) and fixed().item() == pytest.approx(20.0)
    assert [p.requires_grad for p in learnable.parameters()] == [True]
    assert list(fixed.parameters()) == []
    with pytest.raises(ValueError):
        Temperature(0.0)


def _clusters(noise):
    g = torch.Generator().manual_seed(2)
    centers = _unit(torch.randn(4, 16, generator=g))
    pids = torch.arange(4).repeat_interleave(3)
    return _unit(centers[pids] + noise * torch.randn(12, 16, generator=g)), pids


@pytest.mark.parametrize("kind", ["supcon", "triplet"])
def test_identity_losses_prefer_identity_clusters(kind):
    tight, pids = _clusters(0.05)
    shuffled = pids[torch.randperm(12, generator=torch.Generator().manual_seed(3))]
    assert identity_loss(kind, tight, pids) < identity_loss(kind, tight, shuffled)


def test_batch_hard_triplet_value():
    emb = _unit([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]])
    pids = torch.tensor([0, 0, 1, 1])
    # anchor 0: pos dist 0.2, closest neg dist 1.0 -> 0; anchor 1: pos 0.2, neg (to [0,1]) 0.4 -> 0.1
    # anchor 2: pos dist 1.0, neg (to [0.8,.6]) 0.4 -> 0.9; anchor 3: pos 1.0, neg 1.8 -> 0
    expected = (0 + 0.1 + 0.9 + 0) / 4
    assert batch_hard_triplet_loss(emb, pids, margin=0.3).item() == pytest.approx(expected, abs=1e-5)


def test_identity_losses_without_positives_are_zero_with_grad():
    emb = _unit(torch.randn(4, 8)).requires_grad_()
    pids = torch.arange(4)
    for kind in ("supcon", "triplet"):
        loss = identity_loss(kind, emb, pids)
        assert loss.item() == 0.0 and loss.requires_grad
    assert supcon_loss(emb, torch.tensor([0, 0, 1, 2])).item() > 0
    with pytest.raises(ValueError, match="identity loss"):
        identity_loss("arcface", emb, pids)


def test_word_patch_similarity_takes_each_word_s_best_patch_of_each_image():
    # two captions (2 real words + 1 padding) against two images (2 patches + 1 non-patch position)
    text = torch.tensor([[[1.0, 0], [0, 1.0], [9, 9]], [[1.0, 1.0], [-1.0, 0], [9, 9]]])
    image = torch.tensor([[[1.0, 0], [0, -1.0], [0, 1.0]], [[0, 1.0], [0, 1.0], [1.0, 0]]])
    text_mask = torch.tensor([[True, True, False]] * 2)
    image_mask = torch.tensor([[True, True, False]] * 2)  # position 2 (a prompt token) never counts
    sim = word_patch_similarity(text, text_mask, image, image_mask)
    assert sim.shape == (2, 2, 3)
    assert sim[0, 0, :2].tolist() == pytest.approx([1.0, 0.0])  # word 1 = (0, 1): patch (0, 1) of image 0 is masked
    assert sim[0, 1, :2].tolist() == pytest.approx([0.0, 1.0])
    assert sim[1, 0, :2].tolist() == pytest.approx([2**-0.5, 0.0])


def test_word_patch_loss_prefers_captions_whose_words_each_find_a_patch():
    """Image i has one patch per attribute it shows; caption i names them. Shuffled captions score worse, and a
    caption sharing one word with another image is still matched to its own image."""
    basis = torch.eye(6)
    image = torch.stack([basis[[0, 1]], basis[[2, 3]], basis[[4, 5]]])  # (3 images, 2 patches, h)
    text = image.clone() + 0.05  # caption i's two words point at image i's patches
    masks = torch.ones(3, 2, dtype=torch.bool), torch.ones(3, 2, dtype=torch.bool)
    aligned = word_patch_loss(text, masks[0], image, masks[1], 10.0)
    shuffled = word_patch_loss(text[[1, 2, 0]], masks[0], image, masks[1], 10.0)
    assert aligned < 0.1 < 1.0 < shuffled
    partial = text.clone()
    partial[0, 1] = basis[2]  # caption 0's second word names something only image 1 shows
    assert word_patch_loss(partial, masks[0], image, masks[1], 10.0) > aligned
    text_grad = text.clone().requires_grad_(True)
    word_patch_loss(text_grad, masks[0], image, masks[1], 10.0).backward()
    assert torch.isfinite(text_grad.grad).all() and text_grad.grad.abs().sum() > 0


def test_caption_word_positives_count_images_whose_texts_use_the_word():
    captions = ["A red shirt.", "a blue shirt", "red"]
    word_ids = torch.tensor([[-1, 0, 1, 2], [0, 1, 2, -1], [0, -1, -1, -1]])  # -1: prompt / padding
    pos = caption_word_positives(captions, word_ids, ["a red shirt", "a blue shirt, red shoes", "red"])
    assert pos.shape == (3, 4, 3)
    assert pos[0, 2].tolist() == [True, True, True]  # "red": every image's text uses it
    assert pos[0, 3].tolist() == [True, True, False]  # "shirt." (punctuation stripped): not image 2
    assert pos[1, 1].tolist() == [False, True, False]  # "blue": only its own image
    assert pos[0, 0].tolist() == [True, False, False]  # a prompt token: only its own image
    same_person = caption_word_positives(captions, word_ids, pids=torch.tensor([0, 1, 1]))
    assert pos[1, 1].tolist() == [False, True, False] and same_person[1, 1].tolist() == [False, True, True]


def test_word_grounding_loss_rewards_words_matching_only_the_images_that_show_them():
    """Words 'red' / 'blue' (one-hot) against images with a red or a blue patch: aligned states give a low loss,
    swapped ones a high loss; a word every image shows ("a") carries no signal."""
    red, blue, a = torch.eye(3)
    image = torch.stack([torch.stack([red, a]), torch.stack([blue, a])])  # (2 images, 2 patches, h)
    text = torch.stack([torch.stack([a, red]), torch.stack([a, blue])])  # "a red", "a blue"
    masks = torch.ones(2, 2, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool)
    pos = caption_word_positives(["a red", "a blue"], torch.tensor([[0, 1], [0, 1]]))
    aligned = word_grounding_loss(text, masks[0], image, masks[1], pos, 10.0)
    swapped = word_grounding_loss(text[[1, 0]], masks[0], image, masks[1], pos, 10.0)
    assert aligned < 0.1 < 1.0 < swapped
    first_word = torch.tensor([[True, False]] * 2)
    assert word_grounding_loss(text, first_word, image, masks[1], pos, 10.0) == 0.0
