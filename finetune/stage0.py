"""Stage 0: generative pre-training of the offline base so it sees and speaks before the LoRA stages.

Full parameters, language-model loss on the answer tokens only, over captioning ("Describe the person."
-> caption), VQA pairs and yes/no judgements (does a caption describe the image: `match_question`; are two
crops side by side the same person: `verify_question`) of the world's train split. Writes `stage0_done.json`
(loss curve, VQA and judge accuracy on the val split) and saves the weights back into the model folder with
`save_pretrained`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mllm_embed import load_embedder
from mllm_embed.embedder import load_image, side_by_side
from mllm_embed.errors import LineupError

logger = logging.getLogger(__name__)

DONE_FILE = "stage0_done.json"
# the attributes a from-scratch base learns to read off a crop within the CPU budget (measured:
# benchmarks/tiny_base_quality.py); with all 16 at once little is learnt in the same time
CORE_ATTRIBUTES = ("gender", "hair_length", "hair_color", "upper_color", "lower_color")


@dataclass
class Stage0Config:
    """Stage-0 pre-training settings."""

    epochs: int = field(default=12, metadata={"help": "passes over the train pairs"})
    batch_size: int = field(default=16, metadata={"help": "pairs per optimizer step"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate (cosine decay, warmup)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=20, metadata={"help": "linear warmup steps"})
    captions_per_image: int = field(default=1, metadata={"help": "caption pairs per train image"})
    caption_weight: float = field(default=0.5, metadata={"help": "fraction of caption pairs kept per epoch"})
    questions_per_image: int = field(default=0, metadata={"help": "VQA pairs drawn per image per epoch (0: all)"})
    attributes: tuple[str, ...] = field(default=CORE_ATTRIBUTES,
                                        metadata={"help": "VQA attributes to train on (empty: all)"})
    # Off by default: the tiny bases do not learn either judge within the CPU budget (a pure interaction of text
    # and image features, so no first-order gradient; measured 0.50 balanced val accuracy at 0.5/0.5 on the
    # fixture and the demo world, and a worse fixture VQA). 0.5 each adds about 20-30 % stage-0 time.
    match_pairs: float = field(default=0.0, metadata={
        "help": "text-image yes/no judgements (config.match_question) per train image per epoch: half its own "
                "caption (yes), half a caption of another identity (no; half of those hard) (0: none)"})
    same_pairs: float = field(default=0.0, metadata={
        "help": "same-person yes/no judgements (config.verify_question on two crops side by side) per train image "
                "per epoch: half another camera of the same identity, half another identity (half hard) (0: none)"})
    eval_questions: int = field(default=300, metadata={"help": "val VQA pairs scored after training (0: none)"})
    eval_judgements: int = field(default=100, metadata={
        "help": "balanced val pairs per judge (match, same person) scored after training (0: none)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    train_vision: bool = field(default=True, metadata={
        "help": "train the vision tower too (off once `finetune.vision_pretrain` has taught it to see: the "
                "projector and LM learn to read it, and each step costs about half)"})
    seed: int = field(default=0, metadata={"help": "shuffling seed"})

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Stage0Config.{name} must be >= 1")
        if self.lr <= 0:
            raise ValueError("Stage0Config.lr must be > 0")
        if not 0.0 <= self.caption_weight <= 1.0:
            raise ValueError("Stage0Config.caption_weight must be in [0, 1]")
        for name in ("match_pairs", "same_pairs"):
            if getattr(self, name) < 0:
                raise ValueError(f"Stage0Config.{name} must be >= 0")

    @classmethod
    def for_tests(cls) -> Stage0Config:
        """About a minute on one core for the `test`-size base and the 48-identity test world."""
        return cls(epochs=6, warmup_steps=10, eval_questions=120)


def _pairs(world_dir: Path, split: str, cfg: Stage0Config) -> tuple[list[tuple], list[tuple]]:
    """(image, question, answer, attribute) VQA pairs and (image, caption) pairs of one split."""
    from finetune.data.loaders import load_person_dataset, load_vqa

    vqa = load_vqa(world_dir)
    vqa = vqa.filter(lambda row: row["split"] == split)
    qa = [(r["image"], r["question"], r["answer"], r["attribute"]) for r in vqa
          if not cfg.attributes or r["attribute"] in cfg.attributes]
    people = load_person_dataset(world_dir).filter(lambda row: row["split"] == split)
    captions = [(r["image"], c) for r in people for c in r["captions"][: cfg.captions_per_image]]
    return qa, captions


def _draw(qa: list[tuple], per_image: int, rng: random.Random) -> list[tuple]:
    """At most `per_image` random VQA pairs of each image (all when per_image is 0)."""
    if not per_image:
        return list(qa)
    by_image: dict[str, list[tuple]] = defaultdict(list)
    for pair in qa:
        by_image[pair[0]].append(pair)
    return [p for pairs in by_image.values() for p in rng.sample(pairs, min(per_image, len(pairs)))]


# words also said in "no hat or glasses" / "no bag": never evidence that a caption names a value
_NEGATABLE = {"hat", "glasses", "bag"}


def _foreign_words(attrs: dict) -> set[str]:
    """Value words naming a value this person lacks (and no value it has): a caption using one is false."""
    from finetune.data.world import ATTRIBUTES, value_words

    own = {w for k, v in attrs.items() for w in value_words(k, v)}
    other = {w for k, values in ATTRIBUTES.items() for v in values if v != attrs.get(k) for w in value_words(k, v)}
    return other - own - _NEGATABLE


def _differences(a: dict, b: dict) -> int:
    """Attributes two identities differ in (a bag and its colour count once, as in one edit)."""
    keys = {k for k in a if a[k] != b.get(k)}
    return len(keys) - ({"bag", "bag_color"} <= keys)


def split_people(world_dir: Path, split: str) -> list[dict]:
    """One split's images with attributes, captions and the world's noisy caption (None unless it names a
    wrong value) for judgement pairs; images without attributes are left out."""
    from finetune.train import TrainConfig, _records  # the records with parsed attributes and noisy captions

    rows = _records(TrainConfig(base_model="", data=str(world_dir), output_dir=""), split)
    return [{"image": r["image"], "person_id": r["person_id"], "camera_id": r["camera_id"], "captions": r["captions"],
             "attributes": r["attributes"], "noisy": r["noisy_caption"] if r["noisy_words"] else None}
            for r in rows if r["attributes"]]


def _said(kind: str) -> str:
    return "yes" if kind == "yes" else "no"


class Judgements:
    """Balanced yes/no judgement pairs over one split's images, shaped like the VQA pairs:
    (image | (image, image) shown side by side, question, "yes" | "no", kind), kind in
    {"yes", "no hard", "no random"}; half the pairs are yes, half of the no's hard."""

    _KINDS = ("yes", "no hard", "yes", "no random")

    def __init__(self, people: list[dict], config):
        self.people = people
        self.match_prompt, self.verify_question = config.match_prompt, config.verify_question
        self.by_pid: dict[int, list[dict]] = defaultdict(list)
        for person in people:
            self.by_pid[person["person_id"]].append(person)
        attrs = {pid: images[0]["attributes"] for pid, images in self.by_pid.items()}
        self.foreign = {pid: _foreign_words(a) for pid, a in attrs.items()}
        # one-edit neighbours (hard text negatives); family members or same gender + upper colour (hard pairs)
        self.neighbours = {p: [q for q in attrs if q != p and _differences(a, attrs[q]) == 1] for p, a in attrs.items()}
        self.lookalikes = {p: [q for q in attrs if q != p and (_differences(a, attrs[q]) <= 2 or all(
            a[k] == attrs[q][k] for k in ("gender", "upper_color")))] for p, a in attrs.items()}

    def _sample(self, n: int, rng: random.Random) -> list[dict]:
        """n images, every image once before any twice."""
        out: list[dict] = []
        while self.people and len(out) < n:
            out += rng.sample(self.people, len(self.people))
        return out[:n]

    def _other(self, pid: int, rng: random.Random) -> int:
        return rng.choice([q for q in self.by_pid if q != pid])

    def _false_caption(self, person: dict, pids: list[int], rng: random.Random) -> str | None:
        """A caption of an image of one of `pids` that names a value `person` lacks (None if none is found)."""
        for _ in range(8 if pids else 0):
            caption = rng.choice(rng.choice(self.by_pid[rng.choice(pids)])["captions"])
            if {w.strip(".,;:").lower() for w in caption.split()} & self.foreign[person["person_id"]]:
                return caption
        return None

    def match(self, n: int, rng: random.Random) -> list[tuple]:
        """Text-image pairs: the image with its own caption (yes); with its noisy caption or a one-edit
        neighbour's caption (no, hard); with a random other identity's caption (no)."""
        out = []
        for i, person in enumerate(self._sample(n, rng)):
            kind, pid, caption = self._KINDS[i % 4], person["person_id"], None
            if kind == "yes":
                caption = rng.choice(person["captions"])
            if kind == "no hard":
                options = [person["noisy"], self._false_caption(person, self.neighbours[pid], rng)]
                options = [c for c in options if c]
                caption = rng.choice(options) if options else None
                kind = kind if caption else "no random"
            if caption is None and len(self.by_pid) > 1:
                caption = self._false_caption(person, [self._other(pid, rng) for _ in range(8)], rng)
            if caption:
                out.append((person["image"], self.match_prompt(caption), _said(kind), kind))
        return out

    def same(self, n: int, rng: random.Random) -> list[tuple]:
        """Crop pairs: another camera of the same identity (yes); a family member / neighbour or someone of the
        same gender and upper colour (no, hard); a random other identity (no)."""
        out = []
        for i, person in enumerate(self._sample(n, rng)):
            kind, pid = self._KINDS[i % 4], person["person_id"]
            if kind == "yes":
                mine = [p for p in self.by_pid[pid] if p is not person]
                options = [p for p in mine if p["camera_id"] != person["camera_id"]] or mine
            elif len(self.by_pid) < 2:
                continue
            else:
                hard = self.lookalikes[pid] if kind == "no hard" else []
                kind = kind if hard else "no random"
                options = self.by_pid[rng.choice(hard) if hard else self._other(pid, rng)]
            if options:
                pair = (person["image"], rng.choice(options)["image"])
                out.append((pair if rng.random() < 0.5 else pair[::-1], self.verify_question, _said(kind), kind))
        return out


def judge_accuracy(embedder, pairs: list[tuple]) -> dict:
    """Balanced accuracy (mean recall of yes and of no) of `embedder.answer` on `Judgements` pairs; an answer
    starting with "yes" says yes."""
    by_answer: dict[str, list[int]] = defaultdict(list)
    by_kind: dict[str, list[int]] = defaultdict(list)
    said_yes = 0
    for image, question, answer, kind in pairs:
        shown = side_by_side(*image) if isinstance(image, tuple) else image
        yes = embedder.answer(shown, question).startswith("yes")
        said_yes += yes
        by_answer[answer].append(int(yes == (answer == "yes")))
        by_kind[kind].append(int(yes == (answer == "yes")))
    recall = [sum(v) / len(v) for v in by_answer.values()]
    return {"balanced_accuracy": sum(recall) / max(1, len(recall)), "n": len(pairs),
            "yes_rate": said_yes / max(1, len(pairs)), "by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}}


def vqa_accuracy(embedder, pairs: list[tuple], images: dict | None = None) -> dict:
    """Exact-match accuracy of `embedder.answer` over (image, question, answer, attribute) pairs."""
    hits: dict[str, list[int]] = defaultdict(list)
    for image, question, answer, attribute in pairs:
        img = images[image] if images else image
        hits[attribute].append(int(embedder.answer(img, question) == answer.strip().lower()))
    everything = [h for values in hits.values() for h in values]
    return {"accuracy": sum(everything) / max(1, len(everything)), "n": len(everything),
            "by_attribute": {k: sum(v) / len(v) for k, v in sorted(hits.items())}}


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `warmup_steps`, then cosine decay to 0 at `total_steps` (stage 0, vision pre-training)."""

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def pretrain(model_dir: str | Path, world_dir: str | Path, cfg: Stage0Config | None = None,
             progress: Callable[[int], None] | None = None) -> Path:
    """Full-parameter LM training of the base in `model_dir` on the world's train split; saves in place."""
    cfg = cfg or Stage0Config()
    model_dir, world_dir = Path(model_dir), Path(world_dir)
    if not (world_dir / "annotations.jsonl").exists():
        raise LineupError(f"{world_dir}: no annotations.jsonl; render a world first (`lineup world --out DIR`)")
    started = time.time()
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    embedder = load_embedder(model_dir, dtype="fp32")
    qa, captions = _pairs(world_dir, "train", cfg)
    if not qa and not captions:
        raise LineupError(f"{world_dir}: the train split has no VQA or caption pairs")
    question = embedder.config.caption_question
    judge = Judgements(split_people(world_dir, "train"), embedder.config)
    n_match, n_same = (round(rate * len(judge.people)) for rate in (cfg.match_pairs, cfg.same_pairs))
    images = {path: load_image(path)
              for path in {p[0] for p in qa} | {c[0] for c in captions} | {p["image"] for p in judge.people}}

    def pixels(image):
        """A loaded image, or two shown side by side."""
        return side_by_side(images[image[0]], images[image[1]]) if isinstance(image, tuple) else images[image]

    def epoch_batches() -> list[list[tuple]]:
        """VQA + captioning batches and yes/no judgement batches, in random order."""
        kept = rng.sample(captions, int(len(captions) * cfg.caption_weight))
        with_image = [(images[i], q, a) for i, q, a, _ in _draw(qa, cfg.questions_per_image, rng)]
        with_image += [(images[i], question, c) for i, c in kept]
        # judgements (long prompts) batch apart, so they do not pad the short VQA prompts
        judged = [(pixels(i), q, a) for i, q, a, _ in judge.match(n_match, rng) + judge.same(n_same, rng)]
        batches = []
        for items in (with_image, judged):
            rng.shuffle(items)
            batches += [items[s:s + cfg.batch_size] for s in range(0, len(items), cfg.batch_size)]
        rng.shuffle(batches)
        return batches

    steps_per_epoch = len(epoch_batches())
    total = steps_per_epoch * cfg.epochs
    model = embedder.model
    model.train()
    if not cfg.train_vision:
        model.model.vision_tower.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)

    scheduler = warmup_cosine(optimizer, cfg.warmup_steps, total)
    curve = []
    for epoch in range(cfg.epochs):
        losses = []
        for batch in epoch_batches():
            loss = embedder.lm_loss(embedder.lm_batch(batch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if progress:
                progress(1)
        curve.append(sum(losses) / len(losses))
        logger.info("stage 0 epoch %d/%d: loss %.3f", epoch + 1, cfg.epochs, curve[-1])
    model.eval()
    model.save_pretrained(model_dir)

    result = {"loss_curve": curve, "steps": total,
              "train_pairs": {"vqa": len(qa), "captions": len(captions),
                              "match_per_epoch": n_match, "same_person_per_epoch": n_same},
              "seconds": round(time.time() - started, 1), "config": asdict(cfg)}
    if cfg.eval_questions:
        val, _ = _pairs(world_dir, "val", cfg)
        rng.shuffle(val)
        result["val_vqa"] = vqa_accuracy(embedder, val[: cfg.eval_questions])
        logger.info("stage 0 val VQA accuracy %.3f", result["val_vqa"]["accuracy"])
    val_judge = Judgements(split_people(world_dir, "val"), embedder.config) if cfg.eval_judgements else None
    if val_judge and val_judge.people:
        result["val_match"] = judge_accuracy(embedder, val_judge.match(cfg.eval_judgements, rng))
        result["val_same_person"] = judge_accuracy(embedder, val_judge.same(cfg.eval_judgements, rng))
        logger.info("stage 0 val judges (balanced accuracy): match %.3f, same person %.3f",
                    result["val_match"]["balanced_accuracy"], result["val_same_person"]["balanced_accuracy"])
    (model_dir / DONE_FILE).write_text(json.dumps(result, indent=2))
    return model_dir
