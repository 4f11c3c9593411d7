"""The synthetic person world: identities with attributes, rendered crops, TDE captions (with known-wrong
noisy variants), exact composed triplets from one-edit neighbour identities, and VQA pairs.

Everything is a pure function of `WorldConfig.seed`: the same config writes byte-identical files.
Record shapes are specified in docs/CONTRACTS.md section 1.
"""

from __future__ import annotations

import json
import logging
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from finetune.data.jsonl import read_jsonl, write_jsonl
from finetune.data.records import PersonImage
from finetune.data.render import COLORS, HAIR_COLORS, make_style, render
from finetune.data.text import word_spans, words
from mllm_embed.errors import LineupError

log = logging.getLogger(__name__)

_COLOR_NAMES = list(COLORS)
ATTRIBUTES: dict[str, list[str]] = {
    "gender": ["male", "female"],
    "hair_length": ["short", "long"],
    "hair_color": list(HAIR_COLORS),
    "upper_type": ["t-shirt", "shirt", "jacket", "coat", "hoodie"],
    "upper_color": _COLOR_NAMES,
    "lower_type": ["trousers", "jeans", "shorts", "skirt"],
    "lower_color": _COLOR_NAMES,
    "shoes_color": ["black", "white", "brown", "gray", "red", "blue"],
    "bag": ["none", "backpack", "handbag", "shoulder bag"],
    "bag_color": ["none", *_COLOR_NAMES],  # "none" exactly when bag == "none"
    "hat": ["none", "cap", "beanie"],
    "glasses": ["none", "glasses", "sunglasses"],
}

# Words a caption may use for each value (TDE synonyms). Lists of one attribute never share a value word
# that would make a wrong value read as right; "none" values are never phrased as a value word.
_COLOR_WORDS = {c: [c] for c in _COLOR_NAMES} | {"gray": ["gray", "grey"]}
VALUE_PHRASES: dict[str, dict[str, list[str]]] = {
    "gender": {"male": ["man", "guy", "gentleman"], "female": ["woman", "lady", "girl"]},
    "hair_length": {"short": ["short", "cropped"], "long": ["long", "shoulder-length"]},
    "hair_color": {"black": ["black", "dark"], "brown": ["brown"], "blonde": ["blonde", "fair"],
                   "gray": ["gray", "grey", "silver"], "red": ["red", "ginger"]},
    "upper_type": {"t-shirt": ["t-shirt", "tee", "short-sleeved top"],
                   "shirt": ["shirt", "long-sleeved shirt", "button-up shirt"],
                   "jacket": ["jacket", "zip jacket"], "coat": ["coat", "long coat", "overcoat"],
                   "hoodie": ["hoodie", "hooded sweatshirt", "hooded top"]},
    "upper_color": _COLOR_WORDS,
    "lower_type": {"trousers": ["trousers", "pants", "slacks"], "jeans": ["jeans", "denim jeans"],
                   "shorts": ["shorts"], "skirt": ["skirt"]},
    "lower_color": _COLOR_WORDS,
    "shoes_color": _COLOR_WORDS,
    "bag": {"backpack": ["backpack", "rucksack"], "handbag": ["handbag", "purse"],
            "shoulder bag": ["shoulder bag", "messenger bag", "crossbody bag"]},
    "bag_color": _COLOR_WORDS,
    "hat": {"cap": ["cap", "baseball cap"], "beanie": ["beanie", "knit hat"]},
    "glasses": {"glasses": ["glasses", "spectacles"], "sunglasses": ["sunglasses", "shades"]},
}
_PLURAL = {"trousers", "jeans", "shorts", "glasses", "sunglasses", "pants", "slacks", "denim jeans", "spectacles",
           "shades", "shoes", "sneakers", "trainers"}

# Caption templates (TDE: many sentence structures so a model cannot overfit one pattern). Slots:
# a_person ("a woman"), person ("woman"), pron / poss (he/she, his/her), hair, upper, lower, shoes, carry, acc.
# A capitalised slot name capitalises the phrase.
CAPTION_TEMPLATES: list[str] = [
    "{A_person} with {hair}, wearing {upper}, {lower} and {shoes}, carrying {carry}.",
    "Wearing {upper}, the {person} also has {hair} and is carrying {carry}.",
    "The {person} has {hair}. {Pron} is wearing {upper} with {lower} and {shoes}.",
    "This {person} wears {upper} and {lower}, with {shoes} on {poss} feet.",
    "{A_person} in {upper} and {lower} walks along, carrying {carry}.",
    "A pedestrian with {hair} dressed in {upper}, {lower} and {shoes}.",
    "{Pron} has {hair} and wears {upper}, {lower} and {shoes}. {Pron} wears {acc}.",
    "{A_person} carrying {carry}, wearing {upper} and {lower}.",
    "Dressed in {lower} and {upper}, the {person} with {hair} carries {carry}.",
    "In this picture, {a_person} wears {upper}, {lower}, {shoes} and {acc}.",
    "{A_person} who has {hair} is walking in {upper} and {lower}.",
    "{Poss} outfit is {upper}, {lower} and {shoes}. {Pron} has {hair}.",
    "Walking with {carry}, the {person} wears {upper} and {shoes}.",
    "The {person} in the image has {hair}, and is wearing {upper} and {lower}.",
    "You can see {a_person} with {hair} in {upper}; {pron} also wears {lower} and {shoes}.",
    "{A_person} wearing {acc}, {upper} and {lower}.",
    "Look for {a_person} in {upper}, with {hair}, carrying {carry}.",
    "{A_person} with {shoes}, {lower} and {upper} stands on the street.",
    "This is {a_person}. {Pron} wears {upper} and {lower}, has {hair} and carries {carry}.",
    "{A_person} with {hair} and {acc}, in {upper}.",
    "The {person} wears {upper}, paired with {lower} and {shoes}.",
    "Wearing {lower} and {shoes}, {a_person} with {hair} has {upper} on and carries {carry}.",
    "Person seen from a street camera: {a_person} in {upper} and {lower}, carrying {carry}.",
    "{A_person}, {hair}, in {upper} over {lower}, wearing {acc}.",
]

QUESTION_BANK: list[dict[str, str]] = [
    {"key": "gender", "question": "Is the person male or female?"},
    {"key": "hair_length", "question": "Is the person's hair long or short?"},
    {"key": "hair_color", "question": "What color is the person's hair?"},
    {"key": "upper_type", "question": "What kind of top is the person wearing?"},
    {"key": "upper_color", "question": "What color is the person's top?"},
    {"key": "sleeve_length", "question": "Are the sleeves long or short?"},
    {"key": "lower_type", "question": "What is the person wearing on the lower body?"},
    {"key": "lower_color", "question": "What color is the person's lower garment?"},
    {"key": "shoes_color", "question": "What color are the person's shoes?"},
    {"key": "has_bag", "question": "Is the person carrying a bag?"},
    {"key": "bag", "question": "What kind of bag is the person carrying?"},
    {"key": "bag_color", "question": "What color is the bag?"},
    {"key": "has_hat", "question": "Is the person wearing a hat?"},
    {"key": "hat", "question": "What is the person wearing on the head?"},
    {"key": "has_glasses", "question": "Is the person wearing glasses?"},
    {"key": "glasses", "question": "Does the person wear glasses, sunglasses or none?"},
]
_FACE_KEYS = {"has_glasses", "glasses"}  # not visible from behind: no VQA pair for back-view images


def answer_from_attributes(attrs: dict, key: str) -> str:
    """Ground-truth short answer to the QUESTION_BANK question `key` ("red", "yes", "backpack", ...)."""
    derived = {
        "sleeve_length": lambda: "short" if attrs["upper_type"] == "t-shirt" else "long",
        "has_bag": lambda: "no" if attrs["bag"] == "none" else "yes",
        "has_hat": lambda: "no" if attrs["hat"] == "none" else "yes",
        "has_glasses": lambda: "no" if attrs["glasses"] == "none" else "yes",
    }
    if key in derived:
        return derived[key]()
    if key in ATTRIBUTES:
        return str(attrs[key])
    raise ValueError(f"unknown question key {key!r}; valid: {', '.join(q['key'] for q in QUESTION_BANK)}")


@dataclass
class WorldConfig:
    identities: int = field(default=200, metadata={"help": "number of person identities"})
    images_per_id: int = field(default=6, metadata={"help": "images rendered per identity"})
    seed: int = field(default=0, metadata={"help": "the world is a pure function of this seed"})
    height: int = field(default=256, metadata={"help": "crop height in pixels"})
    width: int = field(default=128, metadata={"help": "crop width in pixels"})
    noise_rate: float = field(default=0.3, metadata={"help": "fraction of images that get a noisy caption"})
    captions_per_image: int = field(default=2, metadata={"help": "clean captions per image (>= 2)"})
    neighbour_rate: float = field(
        default=0.5, metadata={"help": "fraction of identities created as one-edit neighbours (composed triplets)"})
    cameras: int = field(default=6, metadata={"help": "number of cameras; each identity is seen by >= 2"})
    val_fraction: float = field(default=0.1, metadata={"help": "fraction of identities in the val split"})
    test_fraction: float = field(default=0.2, metadata={"help": "fraction of identities in the test split"})

    def __post_init__(self):
        checks = [
            ("identities", self.identities >= 3, "must be >= 3"),
            ("images_per_id", self.images_per_id >= 1, "must be >= 1"),
            ("height", self.height >= 64, "must be >= 64"),
            ("width", self.width >= 32, "must be >= 32"),
            ("noise_rate", 0.0 <= self.noise_rate <= 1.0, "must be in [0, 1]"),
            ("captions_per_image", 2 <= self.captions_per_image <= len(CAPTION_TEMPLATES),
             f"must be in [2, {len(CAPTION_TEMPLATES)}]"),
            ("neighbour_rate", 0.0 <= self.neighbour_rate < 0.67, "must be in [0, 0.67)"),
            ("cameras", self.cameras >= 2, "must be >= 2"),
            ("val_fraction/test_fraction", 0 <= self.val_fraction and 0 < self.test_fraction
             and self.val_fraction + self.test_fraction < 1, "need 0 <= val, 0 < test and val + test < 1"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"WorldConfig.{name} {why}")


# ---------------------------------------------------------------------------------------------- identities

def _valid(a: dict) -> bool:
    return not (a["gender"] == "male" and a["lower_type"] == "skirt") and (a["bag"] == "none") == (
        a["bag_color"] == "none")


def _pick(rng: np.random.Generator, values, p=None):
    return values[int(rng.choice(len(values), p=p))]


def sample_attributes(rng: np.random.Generator) -> dict:
    """One identity's attributes with plausible correlations (skirts and long hair mostly female)."""
    female = rng.random() < 0.5
    a = {"gender": "female" if female else "male"}
    a["hair_length"] = "long" if rng.random() < (0.75 if female else 0.12) else "short"
    a["hair_color"] = _pick(rng, ATTRIBUTES["hair_color"], [0.32, 0.3, 0.18, 0.1, 0.1])
    a["upper_type"] = _pick(rng, ATTRIBUTES["upper_type"])
    a["upper_color"] = _pick(rng, _COLOR_NAMES)
    a["lower_type"] = _pick(rng, ATTRIBUTES["lower_type"], [0.25, 0.3, 0.15, 0.3] if female else [0.4, 0.35, 0.25, 0])
    a["lower_color"] = _pick(rng, _COLOR_NAMES)
    a["shoes_color"] = _pick(rng, ATTRIBUTES["shoes_color"])
    a["bag"] = _pick(rng, ATTRIBUTES["bag"], [0.35, 0.25, 0.25, 0.15] if female else [0.35, 0.3, 0.1, 0.25])
    a["bag_color"] = "none" if a["bag"] == "none" else _pick(rng, _COLOR_NAMES)
    a["hat"] = _pick(rng, ATTRIBUTES["hat"], [0.65, 0.2, 0.15])
    a["glasses"] = _pick(rng, ATTRIBUTES["glasses"], [0.65, 0.22, 0.13])
    return a


def apply_edit(attrs: dict, edit: dict) -> dict:
    """`attrs` with one edit applied. The only coupling: removing a bag sets bag_color to "none", adding one
    sets bag_color to edit["color"] (so "add a red backpack" is one edit)."""
    out = dict(attrs)
    out[edit["attribute"]] = edit["to"]
    if edit["attribute"] == "bag" and (edit["to"] == "none" or edit["from"] == "none"):
        out["bag_color"] = edit.get("color", "none") if edit["to"] != "none" else "none"
    return out


_EDITABLE = ["hair_length", "hair_color", "upper_type", "upper_color", "lower_type", "lower_color", "shoes_color",
             "bag", "bag_color", "hat", "glasses"]


def _random_edit(a: dict, rng: np.random.Generator, exclude: set[str]) -> dict | None:
    for _ in range(20):
        attr = _pick(rng, [x for x in _EDITABLE if x not in exclude])
        if attr == "bag_color" and a["bag"] == "none":
            continue
        choices = [v for v in ATTRIBUTES[attr] if v != a[attr] and not (attr == "bag_color" and v == "none")]
        edit = {"attribute": attr, "from": a[attr], "to": _pick(rng, choices)}
        if attr == "bag" and a["bag"] == "none":
            edit["color"] = _pick(rng, _COLOR_NAMES)
        if _valid(apply_edit(a, edit)):
            return edit
    return None


def _inverse(edit: dict, ref: dict) -> dict:
    inv = {"attribute": edit["attribute"], "from": edit["to"], "to": edit["from"]}
    if edit["attribute"] == "bag" and edit["to"] == "none":
        inv["color"] = ref["bag_color"]
    return inv


# ------------------------------------------------------------------------------------------------ captions

def _uniforms(rng, n: int) -> list[float]:
    if isinstance(rng, np.random.Generator):
        return [float(x) for x in rng.random(n)]
    return [rng.random() for _ in range(n)]


def _choose(options: list, u: float):
    return options[min(len(options) - 1, int(u * len(options)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


_Seg = tuple[str, str | None]  # (text, attribute whose value the text states, or None)


def _value(attr: str, attrs: dict, u: float) -> _Seg:
    return (_choose(VALUE_PHRASES[attr][attrs[attr]], u), attr)


def _garment(attrs: dict, color_attr: str, type_attr: str | None, u: list[float], type_words=None) -> list[_Seg]:
    col = _value(color_attr, attrs, u[0])
    typ = _value(type_attr, attrs, u[1]) if type_attr else (_choose(type_words, u[1]), None)
    plural = typ[0] in _PLURAL
    if u[2] < 0.25:  # "a jacket in red"
        return ([] if plural else [(_article(typ[0]) + " ", None)]) + [typ, (" in ", None), col]
    return ([] if plural else [(_article(col[0]) + " ", None)]) + [col, (" ", None), typ]


def _slot(name: str, attrs: dict, u: list[float]) -> list[_Seg]:
    female = attrs["gender"] == "female"
    if name in ("person", "a_person"):
        if u[0] < 0.25:
            noun = [(_choose(["person", "pedestrian"], u[1]), None)]
        else:
            young = [("young ", None)] if u[2] < 0.25 else []
            noun = young + [_value("gender", attrs, u[1])]
        if name == "person":
            return noun
        return [(_article(noun[0][0]) + " ", None)] + noun
    if name == "pron":
        return [("she" if female else "he", None)]
    if name == "poss":
        return [("her" if female else "his", None)]
    if name == "hair":
        length, color = _value("hair_length", attrs, u[0]), _value("hair_color", attrs, u[1])
        if u[2] < 0.3:
            return [length, (", ", None), color, (" hair", None)]
        return [length, (" ", None), color, (" hair", None)]
    if name == "upper":
        return _garment(attrs, "upper_color", "upper_type", u)
    if name == "lower":
        return _garment(attrs, "lower_color", "lower_type", u)
    if name == "shoes":
        return _garment(attrs, "shoes_color", None, u, ["shoes", "sneakers", "trainers"])
    if name == "carry":
        if attrs["bag"] == "none":
            return [(_choose(["nothing", "no bag"], u[0]), None)]
        return _garment(attrs, "bag_color", "bag", u)
    if name == "acc":
        parts = []
        if attrs["hat"] != "none":
            hat = _value("hat", attrs, u[0])
            parts.append([(_article(hat[0]) + " ", None), hat])
        if attrs["glasses"] != "none":
            parts.append([_value("glasses", attrs, u[1])])
        if not parts:
            return [(_choose(["no hat or glasses", "neither a hat nor glasses"], u[2]), None)]
        return parts[0] + ([(" and ", None)] + parts[1] if len(parts) == 2 else [])
    raise KeyError(name)


_SLOT_RE = re.compile(r"\{(\w+)\}")


def _render_caption(attrs: dict, template: str, u: dict[str, list[float]]) -> list[_Seg]:
    """Segments of one caption; choices come from `u` (fixed per slot), so a corrupted copy of `attrs`
    rendered with the same `u` differs only in the value words."""
    segs: list[_Seg] = []
    pos = 0
    for m in _SLOT_RE.finditer(template):
        segs.append((template[pos:m.start()], None))
        name = m.group(1)
        sub = _slot(name.lower(), attrs, u[name.lower()])
        if name[0].isupper():
            sub[0] = (sub[0][0][:1].upper() + sub[0][0][1:], sub[0][1])
        segs.extend(sub)
        pos = m.end()
    segs.append((template[pos:], None))
    return segs


_SLOTS = ("person", "a_person", "pron", "poss", "hair", "upper", "lower", "shoes", "carry", "acc")


def _draw_u(rng) -> dict[str, list[float]]:
    u = _uniforms(rng, 3 * len(_SLOTS))
    return {name: u[3 * i: 3 * i + 3] for i, name in enumerate(_SLOTS)}


def _template(rng, template) -> str:
    if template is None:
        return CAPTION_TEMPLATES[int(_uniforms(rng, 1)[0] * len(CAPTION_TEMPLATES))]
    return CAPTION_TEMPLATES[template] if isinstance(template, int) else template


def describe(attributes: dict, rng, template: int | str | None = None) -> str:
    """A caption of a person with `attributes` from the TDE templates (`template`: index, template string
    or None for a random one). `rng`: numpy Generator or random.Random."""
    tpl = _template(rng, template)
    return _fix_case("".join(t for t, _ in _render_caption(attributes, tpl, _draw_u(rng))))


_SLOT_ATTRIBUTES = {"hair": ("hair_length", "hair_color"), "upper": ("upper_color", "upper_type"),
                    "lower": ("lower_color", "lower_type"), "shoes": ("shoes_color",), "carry": ("bag", "bag_color"),
                    "acc": ("hat", "glasses"), "pron": ("gender",), "poss": ("gender",)}
_TEMPLATE_RES = [(re.compile("^" + "".join(re.escape(p) if i % 2 == 0 else "(.+?)"
                                           for i, p in enumerate(re.split(r"\{(\w+)\}", t))) + "$", re.I),
                  [name.lower() for name in _SLOT_RE.findall(t)]) for t in CAPTION_TEMPLATES]
_GENDER_WORDS = {w for phrases in VALUE_PHRASES["gender"].values() for p in phrases for w in p.split()}


def stated_attributes(caption: str) -> set[str]:
    """The attributes a clean world caption states, read back through the template it was rendered from
    (the longest matching one); empty for any other text."""
    best = None
    for rx, slots in _TEMPLATE_RES:
        m = rx.match(caption)
        if m and (best is None or len(rx.pattern) > len(best[0].re.pattern)):
            best = (m, slots)
    if best is None:
        return set()
    out: set[str] = set()
    for slot, text in zip(best[1], best[0].groups()):
        out.update(_SLOT_ATTRIBUTES.get(slot, ()))
        if slot in ("person", "a_person") and _GENDER_WORDS & set(words(text)):
            out.add("gender")
    return out


def _fix_case(text: str) -> str:
    return text[:1].upper() + text[1:]


def value_words(attr: str, value: str) -> set[str]:
    return {w for phrase in VALUE_PHRASES[attr].get(value, []) for w in phrase.split()}


def noisy_caption(attrs: dict, rng: np.random.Generator, template: str) -> tuple[str, list[int], list[str]]:
    """A caption with 1-2 attribute values replaced by wrong ones; returns (text, wrong word indices by
    str.split(), corrupted attributes). Only words not used for the true value are marked wrong."""
    u = _draw_u(rng)
    stated = {tag for _, tag in _render_caption(attrs, template, u) if tag and tag != "gender"}
    candidates = sorted(stated)
    rng.shuffle(candidates)
    wrong = dict(attrs)
    corrupted = []
    for attr in candidates[: 1 + int(rng.random() < 0.35)]:
        pool = [v for v in ATTRIBUTES[attr] if v not in (attrs[attr], "none")]
        wrong[attr] = _pick(rng, pool)
        corrupted.append(attr)
    segs = _render_caption(wrong, template, u)
    text = _fix_case("".join(t for t, _ in segs))
    # tag per character, then per word
    tags = [tag for t, tag in segs for _ in t]
    indices = []
    for i, ((start, end), word) in enumerate(zip(word_spans(text), words(text))):
        attrs_here = {tags[j] for j in range(start, end)} & set(corrupted)
        if any(word not in value_words(a, attrs[a]) and word for a in attrs_here):
            indices.append(i)
    return text, indices, corrupted


def noisy_variants(records: Sequence[PersonImage], per_image: int = 2, seed: int = 0) -> list[tuple[str, str, list[int]]]:
    """(image, noisy caption, wrong word indices) `per_image` times for each world record (random templates):
    a NAM probe many times larger than the world's own noisy captions."""
    rng = np.random.default_rng(seed)
    out = []
    for r in records:
        for _ in range(per_image):
            template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
            text, wrong, _ = noisy_caption(r.attributes, rng, template)
            if wrong:
                out.append((r.image, text, wrong))
    return out


# ------------------------------------------------------------------------------------------ modifications

_THING = {"upper": "upper_type", "lower": "lower_type", "bag": "bag"}
_COLOR_OF = {"upper_color": "upper_type", "lower_color": "lower_type", "bag_color": "bag"}


def _np(word: str, article: bool = True) -> str:
    """Noun phrase with an article unless plural."""
    if word in _PLURAL or not article:
        return word
    return f"{_article(word)} {word}"


def modification_text(ref: dict, edit: dict, rng: np.random.Generator) -> str:
    """Natural-language instruction that turns `ref` into `apply_edit(ref, edit)`."""
    a, old, new = edit["attribute"], edit["from"], edit["to"]

    def the(word):
        return f"the {word}"

    if a in _COLOR_OF or a in ("shoes_color", "hair_color"):
        thing = {"shoes_color": "shoes", "hair_color": "hair"}.get(a) or ref[_COLOR_OF[a]]
        forms = [f"change {the(thing)} to {new}", f"make {the(thing)} {new}", f"{new} {thing} instead of {old}",
                 f"same person but with {_np(new + ' ' + thing) if thing not in _PLURAL else new + ' ' + thing}",
                 f"swap the {old} {thing} for {new} ones" if thing in _PLURAL else
                 f"swap the {old} {thing} for a {new} one"]
    elif a == "hair_length":
        forms = [f"make the hair {new}", f"with {new} hair instead", f"change to {new} hair",
                 f"same person but with {new} hair"]
    elif new == "none":  # removal
        forms = [f"without {the(old)}", f"remove {the(old)}", f"same person but no {old}",
                 f"take away {the(old)}"]
    elif old == "none":  # addition
        item = f"{edit['color']} {new}" if a == "bag" else new
        forms = [f"add {_np(item)}", f"same person with {_np(item)}", f"also with {_np(item)}",
                 f"give them {_np(item)}"]
    else:  # type change, colour kept
        forms = [f"wearing {_np(new)} instead of {_np(old)}" if a != "bag" else f"carrying {_np(new)} instead of "
                 f"{_np(old)}", f"swap {the(old)} for {_np(new)}", f"change {the(old)} to {_np(new)}",
                 f"replace {the(old)} with {_np(new)} of the same color"]
    return forms[int(rng.integers(len(forms)))]


# ------------------------------------------------------------------------------------------------- world

@dataclass
class _Identity:
    pid: int
    attrs: dict
    family: int
    split: str = ""
    cameras: list[int] = field(default_factory=list)


def _build_identities(cfg: WorldConfig, rng: np.random.Generator):
    """Families of a base identity plus 0-2 neighbours that differ from it in exactly one attribute."""
    seen: set[tuple] = set()
    identities: list[_Identity] = []
    pairs: list[tuple[int, int, dict]] = []  # (reference pid, target pid, edit)
    mean_nb = cfg.neighbour_rate / (1 - cfg.neighbour_rate)

    def unique(a):
        key = tuple(a[k] for k in ATTRIBUTES)
        if key in seen:
            return False
        seen.add(key)
        return True

    family = 0
    while len(identities) < cfg.identities:
        for _ in range(100):
            base = sample_attributes(rng)
            if unique(base):
                break
        base_pid = len(identities)
        identities.append(_Identity(base_pid, base, family))
        used: set[str] = set()
        for _ in range(int(rng.binomial(2, min(1.0, mean_nb / 2)))):
            if len(identities) >= cfg.identities:
                break
            edit = _random_edit(base, rng, used)
            if edit is None or not unique(apply_edit(base, edit)):
                continue
            used.add(edit["attribute"])
            nb = _Identity(len(identities), apply_edit(base, edit), family)
            identities.append(nb)
            pairs.append((base_pid, nb.pid, edit))
        family += 1
    # identity-disjoint splits over whole families (so triplets never cross splits)
    fams: dict[int, list[_Identity]] = {}
    for ident in identities:
        fams.setdefault(ident.family, []).append(ident)
    order = list(fams)
    rng.shuffle(order)
    targets = {"train": 1 - cfg.val_fraction - cfg.test_fraction, "val": cfg.val_fraction, "test": cfg.test_fraction}
    counts = dict.fromkeys(targets, 0)
    for f in order:
        split = max(targets, key=lambda s: targets[s] * cfg.identities - counts[s])
        for ident in fams[f]:
            ident.split = split
        counts[split] += len(fams[f])
    for ident in identities:
        k = min(cfg.cameras, 2 + int(rng.integers(0, 2)))
        ident.cameras = sorted(int(c) + 1 for c in rng.choice(cfg.cameras, k, replace=False))
    return identities, pairs


def _image_name(pid: int, cam: int, k: int) -> str:
    return f"images/{pid:05d}_c{cam}_{k:02d}.png"


def generate_world(out_dir, config: WorldConfig | None = None, progress: Callable[[int], None] | None = None) -> Path:
    """Render the world into `out_dir` (images/, annotations.jsonl, triplets.jsonl, vqa.jsonl, world.json)."""
    cfg = config or WorldConfig()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    identities, pairs = _build_identities(cfg, np.random.default_rng([cfg.seed, 1]))
    images: dict[int, list[tuple[str, int]]] = {}
    annotations, vqa = [], []
    for ident in identities:
        style = make_style(ident.attrs, np.random.default_rng([cfg.seed, 2, ident.pid]))
        for k in range(cfg.images_per_id):
            rng = np.random.default_rng([cfg.seed, 3, ident.pid, k])
            cam = ident.cameras[k % len(ident.cameras)] if k < len(ident.cameras) else int(rng.choice(ident.cameras))
            img, view = render(ident.attrs, style, cam, rng, cfg.width, cfg.height)
            name = _image_name(ident.pid, cam, k)
            img.save(out / name, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
            images.setdefault(ident.pid, []).append((name, cam))
            tpl_idx = rng.choice(len(CAPTION_TEMPLATES), cfg.captions_per_image, replace=False)
            captions = [describe(ident.attrs, rng, int(t)) for t in tpl_idx]
            noisy, noisy_words = None, []
            if rng.random() < cfg.noise_rate:
                noisy, noisy_words, _ = noisy_caption(ident.attrs, rng, CAPTION_TEMPLATES[int(tpl_idx[0])])
            annotations.append({"image": name, "person_id": ident.pid, "camera_id": cam, "split": ident.split,
                                "captions": captions, "attributes": ident.attrs, "noisy_caption": noisy,
                                "noisy_words": noisy_words, "view": view})
            for q in QUESTION_BANK:
                if view == "back" and q["key"] in _FACE_KEYS:
                    continue
                vqa.append({"image": name, "question": q["question"], "answer": answer_from_attributes(
                    ident.attrs, q["key"]), "attribute": q["key"], "split": ident.split})
            if progress:
                progress(1)
    by_pid = {i.pid: i for i in identities}
    trip_rng = np.random.default_rng([cfg.seed, 4])
    triplets = []
    for ref_pid, tgt_pid, edit in pairs:
        for r, t, e in ((ref_pid, tgt_pid, edit), (tgt_pid, ref_pid, _inverse(edit, by_pid[ref_pid].attrs))):
            ref = by_pid[r]
            for name, cam in images[r]:
                other_cam = [x for x in images[t] if x[1] != cam] or images[t]
                target = other_cam[int(trip_rng.integers(len(other_cam)))][0]
                triplets.append({"reference": name, "modification": modification_text(ref.attrs, e, trip_rng),
                                 "target": target, "reference_id": r, "target_id": t, "edit": e,
                                 "split": ref.split})
    for fname, rows in (("annotations.jsonl", annotations), ("triplets.jsonl", triplets), ("vqa.jsonl", vqa)):
        write_jsonl(out / fname, rows)
    split_ids = {s: sorted({i.pid for i in identities if i.split == s}) for s in ("train", "val", "test")}
    meta = {"config": asdict(cfg),
            "counts": {"identities": len(identities), "images": len(annotations), "triplets": len(triplets),
                       "vqa": len(vqa), "noisy_captions": sum(r["noisy_caption"] is not None for r in annotations),
                       **{f"{s}_identities": len(v) for s, v in split_ids.items()}},
            "attributes": ATTRIBUTES, "questions": QUESTION_BANK, "caption_templates": len(CAPTION_TEMPLATES)}
    (out / "world.json").write_text(json.dumps(meta, indent=2))
    log.info("world: %d identities, %d images, %d triplets, %d VQA pairs in %s", len(identities), len(annotations),
             len(triplets), len(vqa), out)
    return out


def world_texts(world_dir: str | Path) -> list[str]:
    """Every caption, question, answer and modification of a world folder (the tokenizer's corpus)."""
    world_dir = Path(world_dir)
    texts: list[str] = []
    fields = {"annotations.jsonl": ("captions", "noisy_caption"), "vqa.jsonl": ("question", "answer"),
              "triplets.jsonl": ("modification",)}
    for name, keys in fields.items():
        path = world_dir / name
        if not path.exists():
            continue
        for row in read_jsonl(path):
            for key in keys:
                value = row.get(key)
                texts.extend(value if isinstance(value, list) else [value] if value else [])
    if not texts:
        raise LineupError(f"{world_dir}: no annotations.jsonl / vqa.jsonl text found; pass a world folder "
                          "(`lineup world`)")
    return texts
