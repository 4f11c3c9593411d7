"""The control: a same-budget conventional CLIP-style dual encoder, the bar the MLLM embedder must clear.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/control_dual_encoder.py \
        [--world /tmp/demo-world] [--also /tmp/demo-world-s1] [--steps 600]

Trains on the world's train split only (one CPU thread, ``torch.set_num_threads(1)``) and evaluates the
test split with the project's own protocols (``retrieval.evaluate.evaluate_t2i`` / ``evaluate_i2i`` /
``evaluate_composed`` over ``retrieval.metrics``): every caption of each test image queries the test images,
image→image excludes same-person same-camera images, composed queries are the test triplets (identity-level
R@K and mAP, exact-target R@K). Each ``--also`` world (another seed: new people, new attribute combinations)
is evaluated with the same weights, without retraining. Prints rich tables and writes
benchmarks/results/control_dual_encoder.json.

Design: image tower = a 4-layer CNN (4×4 patchify stem, then 3×3 convs) on person-aspect crops (default
128×64) whose last feature map
is pooled into horizontal stripes (head / torso / legs / feet keep their place, so "red top, blue trousers"
differs from "blue top, red trousers"); text tower = a word-level tokenizer built from the train split's
captions and modifications and a 2-layer pre-norm transformer with masked mean pooling. Loss per step, on a
batch of P identities × K images with one random caption each: symmetric image–text InfoNCE where every
caption of the same identity is a positive, an image–image SupCon term (same identity positive), and,
on a batch of train triplets, InfoNCE between the composed query normalize(image(ref) + text(modification))
and the target image (positives: images of the target identity; another image of the reference person is
in the gallery as a hard negative). Composed retrieval at test time is that
same sum of the two towers' embeddings.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.data import Triplet, load_split, load_triplets  # noqa: E402
from mllm_embed.errors import LineupError  # noqa: E402
from retrieval.evaluate import evaluate_composed, evaluate_i2i, evaluate_t2i  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "control_dual_encoder.json"
Progress = Callable[[int], None] | None


@dataclass
class ControlConfig:
    steps: int = field(default=600, metadata={"help": "optimizer steps (the training budget)"})
    ids_per_batch: int = field(default=16, metadata={"help": "P identities per batch"})
    images_per_id: int = field(default=4, metadata={"help": "K images per identity (batch = P×K images)"})
    triplets_per_batch: int = field(default=16, metadata={"help": "train triplets per step; 0 = no composed loss"})
    height: int = field(default=128, metadata={"help": "crop height fed to the image tower"})
    width: int = field(default=64, metadata={"help": "crop width fed to the image tower"})
    patch: int = field(default=4, metadata={"help": "stride of the first conv (a patch×patch patchify stem)"})
    channels: tuple[int, ...] = field(default=(32, 64, 128, 192), metadata={
        "help": "CNN widths: the stem, then 3×3 convs of stride 2 except the last (stride 1)"})
    stripes: int = field(default=4, metadata={"help": "horizontal stripes the last feature map is pooled into"})
    text_width: int = field(default=128, metadata={"help": "text transformer width"})
    text_layers: int = field(default=2, metadata={"help": "text transformer layers"})
    dim: int = field(default=256, metadata={"help": "joint embedding dimension"})
    lr: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate (warm-up then cosine)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    temperature: float = field(default=0.07, metadata={"help": "initial InfoNCE temperature (learned)"})
    identity_weight: float = field(default=0.5, metadata={"help": "weight of the image-image SupCon term"})
    composed_weight: float = field(default=1.0, metadata={"help": "weight of the composed-triplet term"})
    word_dropout: float = field(default=0.0, metadata={"help": "training: rate at which caption words are dropped"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, sampling and augmentation"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})

    def __post_init__(self) -> None:
        for name in ("steps", "ids_per_batch", "images_per_id", "height", "width", "stripes", "dim",
                     "text_width", "text_layers", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.ids_per_batch < 2:
            raise ValueError(f"ids_per_batch must be >= 2 (negatives come from other identities), "
                             f"got {self.ids_per_batch}")
        if self.triplets_per_batch < 0:
            raise ValueError(f"triplets_per_batch must be >= 0, got {self.triplets_per_batch}")
        if not self.channels:
            raise ValueError("channels needs at least one stage width")
        stride = self.patch * 2 ** max(0, len(self.channels) - 2)
        if self.height % stride or self.width % stride:
            raise ValueError(f"height and width must be divisible by the CNN's total stride {stride} "
                             f"(patch × 2 per middle stage of channels)")


# --- text -------------------------------------------------------------------------------------------
class WordTokenizer:
    """Lower-case words (``[a-z]+``) of the training text; 0 = pad, 1 = unknown."""

    def __init__(self, texts: Sequence[str], max_len: int = 48):
        words = sorted({w for t in texts for w in self.words(t)})
        self.vocab = {w: i + 2 for i, w in enumerate(words)}
        self.max_len = max_len

    @staticmethod
    def words(text: str) -> list[str]:
        return re.findall(r"[a-z]+", text.lower())

    def __len__(self) -> int:
        return len(self.vocab) + 2

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        ids = [[self.vocab.get(w, 1) for w in self.words(t)][: self.max_len] or [1] for t in texts]
        out = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
        for i, row in enumerate(ids):
            out[i, : len(row)] = torch.tensor(row)
        return out


class TextTower(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int, dim: int, max_len: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, width, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(max_len, width))
        layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=2 * width, dropout=0.1,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, dim)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        x = self.encoder(self.tok(ids) + self.pos[: ids.shape[1]], src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        return self.proj(self.norm((x * keep).sum(1) / keep.sum(1).clamp(min=1)))


# --- images -----------------------------------------------------------------------------------------
class ImageTower(nn.Module):
    """A patchify stem, 3×3 convs of stride 2 and a last one of stride 1 (each with BN, ReLU); the map is
    averaged into horizontal stripes and projected. (A stride-2 3×3 stem costs 3× the CPU time of the
    4×4 patchify stem at the same depth and width.)"""

    def __init__(self, patch: int, channels: Sequence[int], stripes: int, dim: int):
        super().__init__()
        stages, cin = [nn.Conv2d(3, channels[0], patch, stride=patch, bias=False)], channels[0]
        stages += [nn.BatchNorm2d(cin), nn.ReLU()]
        for n, cout in enumerate(channels[1:], 2):
            stride = 1 if n == len(channels) else 2
            stages += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*stages)
        self.stripes = stripes
        self.proj = nn.Sequential(nn.Dropout(0.1), nn.Linear(cin * stripes, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.adaptive_avg_pool2d(self.features(x), (self.stripes, 1))
        return self.proj(f.flatten(1))


MEAN = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
STD = torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1)


def load_crops(images: Sequence, height: int, width: int) -> torch.Tensor:
    """uint8 (n, 3, height, width) tensor of PIL images or paths, resized with antialiasing."""
    arrays = []
    for im in images:
        im = im if isinstance(im, Image.Image) else Image.open(im)
        arrays.append(np.asarray(im.convert("RGB").resize((width, height), Image.BILINEAR)))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def to_input(crops: torch.Tensor) -> torch.Tensor:
    return (crops.float() / 255 - MEAN) / STD


def augment(crops: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Training views: random horizontal flip, a random shift of up to 1/16 of each side (reflect padding)
    and ±20 % brightness; colours keep their hue (they are what captions name)."""
    n, _, h, w = crops.shape
    x = to_input(crops)
    flip = torch.rand(n, generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    ph, pw = h // 16, w // 16
    padded = F.pad(x, (pw, pw, ph, ph), mode="reflect")
    dy = torch.randint(0, 2 * ph + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pw + 1, (n,), generator=gen)
    x = torch.stack([padded[i, :, dy[i]: dy[i] + h, dx[i]: dx[i] + w] for i in range(n)])
    scale = 1 + 0.4 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    return (x + MEAN / STD) * scale - MEAN / STD


# --- the model --------------------------------------------------------------------------------------
class DualEncoder(nn.Module):
    def __init__(self, cfg: ControlConfig, tokenizer: WordTokenizer):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.image = ImageTower(cfg.patch, cfg.channels, cfg.stripes, cfg.dim)
        self.text = TextTower(len(tokenizer), cfg.text_width, cfg.text_layers, cfg.dim, tokenizer.max_len)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.temperature)))

    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(x), dim=-1)

    def embed_texts(self, texts: Sequence[str], drop: tuple[float, torch.Generator] | None = None) -> torch.Tensor:
        """``drop`` = (rate, generator): training only, each word is replaced by padding with that rate."""
        ids = self.tokenizer(texts)
        if drop and drop[0]:
            dropped = ids.masked_fill(torch.rand(ids.shape, generator=drop[1]) < drop[0], 0)
            ids = torch.where((dropped != 0).any(1, keepdim=True), dropped, ids)  # never drop a whole text
        return F.normalize(self.text(ids), dim=-1)

    def compose(self, image_vecs: torch.Tensor, texts: Sequence[str],
                drop: tuple[float, torch.Generator] | None = None) -> torch.Tensor:
        return F.normalize(image_vecs + self.embed_texts(texts, drop), dim=-1)

    def parameter_counts(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"image": count(self.image), "text": count(self.text), "total": count(self)}


class ControlEmbedder:
    """The embedder interface ``retrieval.evaluate`` calls (encode_images / encode_text / encode_composed),
    over a trained DualEncoder: float32, L2-normalised rows."""

    def __init__(self, model: DualEncoder):
        self.model = model.eval()
        self.dim = model.cfg.dim

    @torch.no_grad()
    def _images(self, images: Sequence) -> torch.Tensor:
        return self.model.embed_images(to_input(load_crops(images, self.model.cfg.height, self.model.cfg.width)))

    def _batched(self, items: Sequence, fn, batch_size: int, progress: Progress) -> np.ndarray:
        out = []
        for i in range(0, len(items), batch_size):
            with torch.no_grad():
                out.append(fn(items[i: i + batch_size]).numpy())
            if progress:
                progress(len(items[i: i + batch_size]))
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)

    def encode_images(self, images, batch_size: int = 16, progress: Progress = None) -> np.ndarray:
        return self._batched(list(images), self._images, batch_size, progress)

    def encode_text(self, texts, batch_size: int = 16, progress: Progress = None) -> np.ndarray:
        return self._batched(list(texts), self.model.embed_texts, batch_size, progress)

    def encode_composed(self, pairs, batch_size: int = 16, progress: Progress = None) -> np.ndarray:
        def fn(chunk):
            return self.model.compose(self._images([p[0] for p in chunk]), [p[1] for p in chunk])
        return self._batched(list(pairs), fn, batch_size, progress)


# --- training ---------------------------------------------------------------------------------------
def multi_positive_nce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """-log of the softmax mass on the positives, averaged over rows that have one."""
    has = positive.any(1)
    lse = torch.logsumexp(logits, dim=1)
    pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    return (lse - pos)[has].mean() if has.any() else logits.sum() * 0


def _triplet_rows(path: Path, split: str) -> list[Triplet]:
    try:
        return load_triplets(path, split)
    except (LineupError, FileNotFoundError):
        return []


def train_control(world: str | Path, cfg: ControlConfig | None = None, progress: Progress = None) -> tuple[
        DualEncoder, dict]:
    """Train on ``world``'s train split; returns the model and a log (loss curve, seconds, counts)."""
    cfg = cfg or ControlConfig()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    records = load_split(world, "train", required=True)
    triplets = _triplet_rows(Path(world), "train") if cfg.triplets_per_batch else []
    texts = [c for r in records for c in r.captions] + [t.modification for t in triplets]
    tokenizer = WordTokenizer(texts)
    model = DualEncoder(cfg, tokenizer)
    started, cpu = time.time(), time.process_time()
    crops = load_crops([r.image for r in records], cfg.height, cfg.width)
    row = {r.image: i for i, r in enumerate(records)}
    pids = torch.tensor([r.person_id for r in records])
    by_pid: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_pid.setdefault(r.person_id, []).append(i)
    people = sorted(by_pid)
    if len(people) < 2:
        raise LineupError(f"{world}: the train split needs at least 2 identities to train the control")
    triplets = [t for t in triplets if t.reference in row and t.target_id in by_pid]

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos" not in n]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2 or "pos" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, s - warmup) / max(1, cfg.steps - warmup)))))
    curve = []
    drop = (cfg.word_dropout, gen)
    model.train()
    for step in range(cfg.steps):
        chosen = rng.sample(people, min(cfg.ids_per_batch, len(people)))
        idx = [i for p in chosen for i in rng.choices(by_pid[p], k=cfg.images_per_id)]
        img = model.embed_images(augment(crops[idx], gen))
        txt = model.embed_texts([rng.choice(records[i].captions) for i in idx], drop)
        same = pids[idx][:, None] == pids[idx][None, :]
        scale = model.log_scale.clamp(max=math.log(100)).exp()
        sim = scale * img @ txt.T
        terms = {"contrastive": (multi_positive_nce(sim, same) + multi_positive_nce(sim.T, same)) / 2}
        if cfg.identity_weight:
            eye = torch.eye(len(idx), dtype=torch.bool)
            ii = (scale * img @ img.T).masked_fill(eye, float("-inf"))
            terms["identity"] = cfg.identity_weight * multi_positive_nce(ii, same & ~eye)
        if triplets and cfg.composed_weight:
            batch = rng.sample(triplets, min(cfg.triplets_per_batch, len(triplets)))
            # gallery: an image of each target person and, as hard negatives, another image of each reference
            # person (the one-edit neighbour the query starts from)
            gallery = [rng.choice(by_pid[t.target_id]) for t in batch]
            gallery += [rng.choice([i for i in by_pid[t.reference_id] if i != row[t.reference]]
                                   or by_pid[t.reference_id]) for t in batch]
            both = model.embed_images(augment(crops[[row[t.reference] for t in batch] + gallery], gen))
            query = model.compose(both[: len(batch)], [t.modification for t in batch], drop)
            tid = torch.tensor([t.target_id for t in batch])
            terms["composed"] = cfg.composed_weight * multi_positive_nce(
                scale * query @ both[len(batch):].T, tid[:, None] == pids[gallery][None, :])
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == cfg.steps - 1:
            curve.append({"step": step, "loss": round(loss.item(), 4),
                          **{k: round(v.item(), 4) for k, v in terms.items()}})
        if progress:
            progress(1)
    model.eval()
    return model, {"train_seconds": round(time.time() - started, 1),
                   "train_cpu_seconds": round(time.process_time() - cpu, 1), "loss_curve": curve,
                   "train_images": len(records), "train_identities": len(people),
                   "train_triplets": len(triplets), "vocab": len(tokenizer),
                   "temperature": round(1 / model.log_scale.clamp(max=math.log(100)).exp().item(), 4)}


def evaluate_control(model: DualEncoder, world: str | Path, split: str = "test", batch_size: int = 64) -> dict:
    """The project's t2i / i2i / composed protocols on ``world``'s ``split`` (one encoded gallery)."""
    started = time.time()
    embedder = ControlEmbedder(model)
    records = load_split(world, split, required=True)
    vecs = embedder.encode_images([r.image for r in records], batch_size)
    out = {"t2i": evaluate_t2i(embedder, records, vecs, batch_size),
           "i2i": evaluate_i2i(embedder, records, vecs, batch_size)}
    triplets = _triplet_rows(Path(world), split)
    if triplets:
        out["composed"] = evaluate_composed(embedder, records, triplets, vecs, batch_size)
    pids = [r.person_id for r in records]
    out["split"] = {"name": split, "images": len(records), "identities": len(set(pids)),
                    "chance_R1": 100 * float(np.mean([(pids.count(p)) / len(pids) for p in pids]))}
    out["eval_seconds"] = round(time.time() - started, 1)
    return out


# --- report -----------------------------------------------------------------------------------------
def _world_info(world: Path) -> dict:
    meta = json.loads((world / "world.json").read_text()) if (world / "world.json").exists() else {}
    conf = meta.get("config", {})
    return {"path": str(world), "seed": conf.get("seed"), "identities": conf.get("identities"),
            "images_per_id": conf.get("images_per_id")}


def _tables(result: dict):
    from rich.table import Table

    rows = [(f"seed {w['world']['seed']} {split}{'' if n else ' (trained on train)'}", res)
            for n, w in enumerate([result] + result["other_worlds"]) for split, res in w["eval"].items()]
    tables = []
    for key, title, cols in (("t2i", "text → image", ("R1", "R5", "R10", "mAP", "mINP", "queries")),
                             ("i2i", "image → image (cross-camera)", ("R1", "R5", "R10", "mAP", "mINP", "queries")),
                             ("composed", "image + modification → image (identity level; exact image: exact_R@K)",
                              ("R@1", "R@5", "R@10", "mAP", "exact_R@1", "exact_R@10", "queries"))):
        table = Table(title=f"control dual encoder — {title}")
        table.add_column("world, split")
        for c in cols:
            table.add_column(c, justify="right")
        for name, res in rows:
            if key in res:
                table.add_row(name, *(f"{res[key][c]:.2f}" if isinstance(res[key].get(c), float)
                                      else str(res[key].get(c, "")) for c in cols))
        tables.append(table)
    return tables


def main(argv: list[str] | None = None) -> None:
    import dataclasses

    from rich.console import Console
    from rich.progress import Progress as Bar

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=Path("/tmp/demo-world"),
                    help="world to train on (its train split) and test on (its test split)")
    ap.add_argument("--also", type=Path, nargs="*", default=[Path("/tmp/demo-world-s1")],
                    help="other worlds whose test split is evaluated without retraining (missing ones are skipped)")
    ap.add_argument("--splits", nargs="+", default=["val", "test"],
                    help="splits evaluated (val to tune on, test to report)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    for f in dataclasses.fields(ControlConfig):
        kw = {"nargs": "+", "type": int} if f.name == "channels" else {"type": type(f.default)}
        ap.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=f.default,
                        help=f"{f.metadata['help']} (default: {f.default})", **kw)
    args = ap.parse_args(argv)
    console = Console()
    try:
        cfg = ControlConfig(**{f.name: tuple(v) if isinstance(v := getattr(args, f.name), list) else v
                               for f in dataclasses.fields(ControlConfig)})
        with Bar(console=console, transient=True) as bar:
            task = bar.add_task("training the control", total=cfg.steps)
            model, log = train_control(args.world, cfg, lambda n: bar.advance(task, n))
        result = {"command": "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/control_dual_encoder.py "
                             + " ".join(sys.argv[1:] if argv is None else argv),
                  "world": _world_info(args.world), "config": asdict(cfg), "steps": cfg.steps,
                  "params": model.parameter_counts(), **log,
                  "eval": {s: evaluate_control(model, args.world, s) for s in args.splits},
                  "other_worlds": [{"world": _world_info(w), "eval": {s: evaluate_control(model, w, s)
                                                                     for s in args.splits}}
                                   for w in args.also if (w / "world.json").exists()]}
    except (LineupError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2)
    for table in _tables(result):
        console.print(table)
    console.print(f"{result['params']['total']:,} parameters (image {result['params']['image']:,}, text "
                  f"{result['params']['text']:,}); {cfg.steps} steps in {result['train_seconds']} s on "
                  f"{cfg.threads} thread(s) ({result['train_cpu_seconds']} CPU s); text→image chance Rank-1 "
                  + ", ".join(f"{s} {r['split']['chance_R1']:.1f} %" for s, r in result["eval"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
