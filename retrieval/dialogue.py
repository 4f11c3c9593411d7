"""The words of a dialogue: which question-bank answers a description already gives, whether a reply answers
the open question, and which payload filter a phrase such as "only with a backpack" or "no hat" names.

Everything is read from a ``Vocabulary``: the question bank, each question's answer values with the words a
person uses for them (the world's ``ATTRIBUTES`` / ``VALUE_PHRASES``), and how derived questions follow from
the attributes (``finetune.data.world.answer_from_attributes``). Callers build it with
``Vocabulary.build(QUESTION_BANK, ATTRIBUTES, VALUE_PHRASES, answer_from_attributes)``, so this module imports
nothing from ``finetune``.

Colour and length words are attached to the noun they modify ("long brown hair in a red coat and black
trousers": hair length long, hair colour brown, top colour red, lower-garment colour black): the noun groups
are the keys' stems (``hair_color`` modifies ``hair``, ``upper_color`` modifies the ``upper_type`` words).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

YES = ("yes", "y", "yeah", "yep", "true")
NO = ("no", "n", "nope", "false")
NEGATIONS = {"no", "without", "not", "neither", "nor"}
PRONOUNS = {"female": ("she", "her"), "male": ("he", "his", "him")}
# nouns a description uses for a group that has no type attribute of its own (shoes_color → "shoes")
GROUP_NOUNS = {"hair": ("hair",), "shoes": ("shoes", "sneakers", "trainers", "boots"), "upper": ("top",),
               "lower": ("bottoms",), "bag": ("bag",), "hat": ("hat",), "glasses": ("glasses",)}
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


PLURALS = {"women": "woman", "men": "man", "ladies": "lady", "girls": "girl", "guys": "guy", "people": "person",
           "backpacks": "backpack", "handbags": "handbag", "bags": "bag", "hats": "hat", "caps": "cap"}


def normalize_answer(answer: str) -> str:
    return " ".join(str(answer).lower().strip().rstrip(".!").split())


def tokens(text: str) -> list[str]:
    return [PLURALS.get(t, t) for t in _WORD.findall(text.lower())]


def _find(toks: Sequence[str], phrase: Sequence[str], start: int = 0) -> list[int]:
    n = len(phrase)
    return [i for i in range(start, len(toks) - n + 1) if list(toks[i:i + n]) == list(phrase)]


@dataclass
class Vocabulary:
    """Question bank + answer values and their words; see ``build``."""

    bank: list[dict[str, str]]
    options: dict[str, dict[str, list[str]]]  # key -> value -> phrases (the value itself first)
    attributes: set[str] = field(default_factory=set)  # keys that are attributes (the rest are derived)
    derive: Callable[[dict, str], str] | None = None  # (known attributes, derived key) -> value, KeyError if unknown

    @classmethod
    def build(cls, bank: Sequence[dict[str, str]], attributes: Mapping[str, Sequence[str]],
              value_phrases: Mapping[str, Mapping[str, Sequence[str]]],
              derive: Callable[[dict, str], str] | None = None) -> "Vocabulary":
        options: dict[str, dict[str, list[str]]] = {}
        for q in bank:
            key = q["key"]
            if key in attributes:
                options[key] = {}
                for value in attributes[key]:
                    words = [value, *value_phrases.get(key, {}).get(value, [])]
                    if value == "none":
                        noun = key.split("_")[0]
                        words += [f"no {noun}", "nothing"] if noun in ("bag",) else [f"no {noun}"]
                    options[key][value] = list(dict.fromkeys(words))
            elif key.startswith("has_"):
                options[key] = {"yes": list(YES), "no": list(NO)}
            else:  # a derived key with free values (sleeve_length): the values named in the question
                values = [w for w in tokens(q["question"]) if w in ("long", "short")]
                options[key] = {v: [v] for v in values}
        return cls(list(bank), options, set(attributes) & set(options), derive)

    def question(self, key: str) -> dict[str, str]:
        return next(q for q in self.bank if q["key"] == key)

    # --- one reply to one question ---------------------------------------------------------------------
    def canonical(self, key: str, reply: str) -> str | None:
        """The answer value ``reply`` gives to question ``key`` ("guy" → "male", "grey" → "gray"), or None when
        it names no option or several."""
        toks = tokens(reply)
        if not toks:
            return None
        hits = {value for value, phrases in self.options.get(key, {}).items()
                for p in phrases if _find(toks, tokens(p))}
        if len(hits) > 1:  # "no bag" names both "no" and the bag: the longest phrase decides
            best = max(((len(tokens(p)), v) for v, ps in self.options[key].items() for p in ps
                        if _find(toks, tokens(p))), default=(0, None))
            longest = [v for v, ps in self.options[key].items() for p in ps
                       if _find(toks, tokens(p)) and len(tokens(p)) == best[0]]
            return best[1] if len(set(longest)) == 1 else None
        return next(iter(hits), None)

    def hint(self, key: str, reply: str) -> str:
        q = self.question(key)
        values = [v for v in self.options.get(key, {})]
        shown = ", ".join(values[:8]) + (" …" if len(values) > 8 else "")
        return f"'{reply}' does not answer “{q['question']}” — say {shown} (or 'skip')"

    # --- a description -------------------------------------------------------------------------------
    def parse(self, text: str) -> dict[str, str]:
        """The answers ``text`` gives, explicitly stated ones only (see ``implied`` for the rest)."""
        toks = tokens(text)
        found: dict[str, str] = {}
        taken: set[int] = set()
        spans = []  # (start, end, group, key or None, value or None)
        nouns = []
        for key in sorted(self.attributes):
            if key.endswith(("_color", "_length")) or key == "gender":
                continue
            for value, phrases in self.options[key].items():
                if value == "none":
                    continue
                nouns += [(tokens(p), key.split("_")[0], key, value) for p in phrases]
        for group, words in GROUP_NOUNS.items():
            nouns += [([w], group, None, None) for w in words]
        for phrase, group, key, value in sorted(nouns, key=lambda n: -len(n[0])):
            for i in _find(toks, phrase):
                span = set(range(i, i + len(phrase)))
                if span & taken:
                    continue
                taken |= span
                spans.append((i, i + len(phrase), group, key, value))
        spans.sort()
        negated_list = False
        for n, (start, end, group, key, value) in enumerate(spans):
            before = [t for t in toks[max(0, start - 3):start] if t not in ("a", "an", "any", "the")]
            negated = bool(before) and before[-1] in NEGATIONS
            if before and before[-1] == "or" and negated_list:
                negated = True
            negated_list = negated
            noun_key = key or (group if group in self.attributes else None)
            if negated:
                if noun_key and "none" in self.options.get(noun_key, {}):
                    found[noun_key] = "none"
                elif f"has_{group}" in self.options:
                    found[f"has_{group}"] = "no"
                continue
            if key:
                found[key] = value
            elif f"has_{group}" in self.options:
                found.setdefault(f"has_{group}", "yes")
            self._modifiers(toks, start, end, group, found)
        for value, phrases in self.options.get("gender", {}).items():
            words = [w for p in phrases for w in tokens(p)] + list(PRONOUNS.get(value, ()))
            if any(w in toks for w in words):
                found.setdefault("gender", value)
        if "nothing" in toks and "bag" in self.options:
            found.setdefault("bag", "none")
        return found

    def _modifiers(self, toks: list[str], start: int, end: int, group: str, found: dict[str, str]) -> None:
        """Colour / length words right before the noun ("long brown hair") or after it ("a jacket in red")."""
        keys = [k for k in self.attributes if k.startswith(group + "_") and k.endswith(("_color", "_length"))]
        if not keys:
            return
        words = {w: (k, v) for k in keys for v, ps in self.options[k].items() if v != "none"
                 for p in ps for w in [p] if len(tokens(p)) == 1}
        i = start - 1
        while i >= 0 and (toks[i] in words or toks[i] in ("a", "an")) and not (i > 0 and toks[i - 1] == "in"):
            if toks[i] in words:
                k, v = words[toks[i]]
                found.setdefault(k, v)
            i -= 1
        if end + 1 < len(toks) and toks[end] == "in" and toks[end + 1] in words:
            k, v = words[toks[end + 1]]
            found.setdefault(k, v)

    def stated(self, text: str) -> dict[str, str]:
        """What ``text`` states, closed under the bank's relations (``implied(parse(text))``)."""
        return self.implied(self.parse(text))

    def implied(self, known: Mapping[str, str]) -> dict[str, str]:
        """``known`` closed under the bank's relations: derived keys from attributes (has_bag from bag,
        sleeve_length from upper_type), "none" for an attribute whose has_ question is "no", a "none" colour
        for an absent thing."""
        out = dict(known)
        changed = True
        while changed:
            changed = False
            for key in self.options:
                if key in out:
                    continue
                value = None
                if key.startswith("has_") and key[4:] in out:
                    value = "no" if out[key[4:]] == "none" else "yes"
                elif key in self.attributes and out.get(f"has_{key}") == "no" and "none" in self.options[key]:
                    value = "none"
                elif key.endswith("_color") and out.get(key[:-6]) == "none" and "none" in self.options[key]:
                    value = "none"
                elif key.endswith("_color") and out.get(f"has_{key[:-6]}") == "no" and "none" in self.options[key]:
                    value = "none"
                elif key not in self.attributes and not key.startswith("has_") and self.derive is not None:
                    try:
                        value = self.derive(out, key)
                    except (KeyError, TypeError, ValueError):
                        value = None
                if value is not None:
                    out[key] = value
                    changed = True
        return out

    # --- a composed query's modification ------------------------------------------------------------
    def modification(self, text: str) -> dict[str, str]:
        """The answers a modification says the wanted person has (closed under ``implied``): "swap the red coat
        for a blue one" → coat, blue top; "make the hair long" → long hair; "remove the backpack" → no bag;
        "wearing a shirt instead of a coat" → a shirt. What the old part names ("the red coat") is not stated."""
        text = re.sub(r"\b(remove|take away|drop)\b", "without", " ".join(tokens(text)))
        text = re.sub(r"\bof the same colou?r\b", "", text)
        new, old = text, ""
        if " instead of " in text:
            new, old = text.split(" instead of ", 1)
        elif m := re.search(r"\b(?:swap|replace|change)\b(.*?)\b(?:for|with|to)\b(.*)", text):
            old, new = m.group(1), m.group(2)
        elif m := re.search(r"\bmake\b(.*) (\S+)$", text):
            old, new = m.group(1), m.group(2)
        noun = (tokens(old) or [""])[-1]
        new = re.sub(r"\bones?\b", noun, new)
        if not self.parse(new):  # "change the coat to blue": a colour or length of the old part's noun
            new = f"{new} {noun}"
        return self.stated(new)

    # --- filters -------------------------------------------------------------------------------------
    def filter_phrase(self, text: str) -> "AnswerFilter | None":
        """"only with a backpack" / "no hat" / "without glasses" / "only women" / "camera 3" → a filter, or None."""
        toks = tokens(text)
        if len(toks) >= 2 and toks[0] in ("camera", "cam") and toks[1].isdigit():
            return AnswerFilter(f"camera {toks[1]}", {"camera_id": int(toks[1])})
        if not toks or toks[0] not in ("only", "no", "without") or len(toks) < 2:
            return None
        rest = " ".join(toks[1:]) if toks[0] == "only" else text
        parsed = self.parse(rest)
        if toks[0] == "only" and toks[1:2] == ["camera"] and len(toks) > 2 and toks[2].isdigit():
            return AnswerFilter(f"camera {toks[2]}", {"camera_id": int(toks[2])})
        if not parsed:
            return None
        # the most specific statement per noun: "a red backpack" filters bag and bag colour, not has_bag too
        keys = [k for k in parsed if not (k.startswith("has_") and k[4:] in parsed)]
        label = ("only " if toks[0] == "only" else "no ") + " ".join(
            t for t in toks[1:] if t not in ("a", "an", "with", "the"))
        return AnswerFilter(label, {f"answers.{k}": parsed[k] for k in keys})


@dataclass(frozen=True)
class AnswerFilter:
    """A payload filter the user named: a label for the header and ``{payload key: value}`` conditions."""

    label: str
    conditions: dict[str, Any]

    def matches(self, words: Sequence[str]) -> bool:
        """Does a removal request ("drop the backpack filter") name this filter?"""
        mine = set(tokens(self.label)) - {"only", "no", "with"}
        return bool(mine & set(words))


def merge_filters(base: Mapping[str, Any] | None, filters: Sequence[AnswerFilter]) -> dict[str, Any] | None:
    out = dict(base or {})
    for f in filters:
        out.update(f.conditions)
    return out or None
