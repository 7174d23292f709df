"""The synthetic text corpus: voice-assistant commands, numbers, times, dates, everyday sentences.

Sentences come from the templates in corpus_templates filled with the word lists in corpus_lexicon
(and generated numbers, times, dates), then normalized to spoken form with normalize_text.
Generation is deterministic under a seed (random.Random; never Python's hash-randomized set order).

The train/dev/test split is by a stable hash of the normalized sentence and does NOT depend on the
seed, so a sentence that is test-side for one build is test-side for every build: the shipped
synthetic test set can never leak into a training corpus built later with another seed.
"""
from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from workbench.data import corpus_lexicon as lex
from workbench.data.corpus_templates import FAMILIES
from workbench.data.text import normalize_text

#: Fractions of the hash space that go to each held-out split (the rest is train).
TEST_FRACTION = 0.08
DEV_FRACTION = 0.06

_IRREGULAR_PLURALS = {"mouse": "mice", "sheep": "sheep", "moose": "moose", "deer": "deer",
                      "fish": "fish", "goose": "geese", "wolf": "wolves", "octopus": "octopuses",
                      "pharmacy": "pharmacies", "bakery": "bakeries", "vet": "vets"}


def pluralize(noun: str) -> str:
    """English plural of the last word of `noun` (regular rules plus the irregulars we use)."""
    head, _, last = noun.rpartition(" ")
    if last in _IRREGULAR_PLURALS:
        plural = _IRREGULAR_PLURALS[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        plural = last + "es"
    elif re.search(r"[^aeiou]y$", last):
        plural = last[:-1] + "ies"
    else:
        plural = last + "s"
    return f"{head} {plural}" if head else plural


def _time(rng: random.Random) -> str:
    """A clock time in one of the ways people write or say it."""
    h, m = rng.randint(1, 12), rng.choice((0, 0, 5, 10, 15, 20, 30, 30, 40, 45, 50, rng.randint(1, 59)))
    style = rng.random()
    if style < 0.45:
        if m:
            return f"{h}:{m:02d} {rng.choice(('am', 'pm', 'a.m.', 'p.m.'))}"
        return f"{h} {rng.choice(('am', 'pm'))}"
    if style < 0.65:
        return f"{rng.randint(0, 23)}:{m:02d}"
    if style < 0.85:
        return rng.choice((f"half past {h}", f"quarter past {h}", f"quarter to {h}", f"{h} o'clock",
                           f"{m or 10} minutes past {h}"))
    return rng.choice(("noon", "midnight", "sunrise", f"{h}:{m:02d}"))


def _duration(rng: random.Random) -> str:
    n = rng.choice((1, 2, 3, 5, 10, 15, 20, 25, 30, 40, 45, 50, 90, rng.randint(2, 59)))
    style = rng.random()
    if style < 0.55:
        return f"{n} minute" if n == 1 else f"{n} minutes"
    if style < 0.7:
        return f"{n} seconds"
    if style < 0.85:
        h = rng.randint(1, 4)
        return f"{h} hour" if h == 1 else f"{h} hours"
    return rng.choice(("an hour and a half", "half an hour", "a quarter of an hour",
                       f"{rng.randint(1, 3)} hours and {rng.choice((10, 15, 20, 30, 45))} minutes",
                       "a minute and a half", f"{rng.randint(2, 9)} and a half minutes"))


def _date(rng: random.Random) -> str:
    month, day = rng.choice(lex.MONTHS), rng.randint(1, 28 if rng.random() < 0.6 else 31)
    style = rng.random()
    if style < 0.4:
        return f"{month} {day}{_suffix(day)}"
    if style < 0.7:
        return f"the {day}{_suffix(day)} of {month}"
    if style < 0.85:
        return f"{month} {day}"
    return rng.choice((f"next {rng.choice(lex.WEEKDAYS)}", f"this {rng.choice(lex.WEEKDAYS)}",
                       "new year's day", "christmas eve", "the end of the month"))


def _suffix(day: int) -> str:
    if 10 <= day % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def _phone(rng: random.Random) -> str:
    return " ".join(str(rng.randint(0, 9)) for _ in range(rng.choice((4, 6, 7, 10))))


def _money(rng: random.Random) -> str:
    cur = rng.choice(("$", "$", "£", "€"))
    whole = rng.choice((rng.randint(1, 20), rng.randint(20, 500), rng.randint(1000, 9000)))
    cents = rng.choice(("", "", f".{rng.randint(1, 99):02d}", ".50", ".99"))
    return f"{cur}{whole:,}{cents}" if whole >= 1000 else f"{cur}{whole}{cents}"


def _choice(items: tuple[str, ...]) -> Callable[[random.Random], str]:
    return lambda rng: rng.choice(items)


#: Slot name -> generator. Lists come from corpus_lexicon; the rest are small generators.
SLOTS: dict[str, Callable[[random.Random], str]] = {
    "room": _choice(lex.ROOMS), "light": _choice(lex.LIGHT_DEVICES), "device": _choice(lex.DEVICES),
    "color": _choice(lex.COLORS), "food": _choice(lex.FOODS), "item": _choice(lex.SHOPPING_ITEMS),
    "name": _choice(lex.FIRST_NAMES), "relative": _choice(lex.RELATIVES), "city": _choice(lex.CITIES),
    "place": _choice(lex.PLACES), "genre": _choice(lex.GENRES), "instrument": _choice(lex.INSTRUMENTS),
    "animal": _choice(lex.ANIMALS), "object": _choice(lex.OBJECTS), "adj": _choice(lex.ADJECTIVES),
    "verb": _choice(lex.VERBS_PAST), "food_verb": _choice(lex.FOOD_VERBS),
    "verb_base": _choice(lex.VERBS_BASE), "pastday": _choice(lex.PAST_TIMES),
    "job": _choice(lex.JOBS), "activity": _choice(lex.ACTIVITIES),
    "weekday": _choice(lex.WEEKDAYS), "dayword": _choice(lex.DAY_PARTS), "event": _choice(lex.EVENTS),
    "task": _choice(lex.TASKS), "weather": _choice(lex.WEATHER_WORDS), "vehicle": _choice(lex.VEHICLES),
    "feeling": _choice(lex.FEELINGS), "nature": _choice(lex.NATURE), "language": _choice(lex.LANGUAGES),
    "unit": _choice(lex.UNITS_CONVERT), "dish": _choice(lex.DISHES), "shop": _choice(lex.SHOPS),
    "phrase": _choice(lex.PHRASES), "word": _choice(lex.SPELL_WORDS),
    "food_singular": _choice(lex.TIMER_NAMES), "weather_verb": _choice(lex.WEATHER_VERBS),
    "weather_adj": _choice(lex.WEATHER_ADJECTIVES), "everyday": _choice(lex.EVERYDAY),
    "animals": lambda rng: pluralize(rng.choice(lex.ANIMALS)),
    "shops": lambda rng: pluralize(rng.choice(lex.SHOPS)),
    "place_short": lambda rng: "the " + rng.choice(lex.SHOPS),
    "unit_single": lambda rng: rng.choice(("mile", "kilogram", "pound", "foot", "meter", "gallon",
                                           "liter", "cup", "yard", "ton")),
    "polite": lambda rng: rng.choice(("", "", "", "please ", "could you ", "hey, ", "can you ")),
    "onoff": lambda rng: rng.choice(("on", "off")),
    "pct": lambda rng: f"{rng.choice(range(5, 101, 5))}%",
    "temp": lambda rng: rng.choice((f"{rng.randint(16, 28)} degrees", f"{rng.randint(60, 80)} degrees",
                                    f"{rng.randint(16, 28)}°C", f"{rng.randint(58, 82)}°F")),
    "oventemp": lambda rng: rng.choice((f"{rng.choice(range(150, 240, 10))}°C",
                                        f"{rng.choice(range(300, 475, 25))}°F")),
    "n": lambda rng: str(rng.randint(2, 12)),
    "small": lambda rng: str(rng.randint(2, 5)),
    "n60": lambda rng: str(rng.randint(5, 59)),
    "n99": lambda rng: str(rng.randint(1, 99)),
    "n999": lambda rng: str(rng.choice((rng.randint(100, 999), rng.randint(10, 99),
                                        rng.randint(1, 9) * 100))),
    "square": lambda rng: str(rng.randint(2, 30) ** 2),
    "decimal": lambda rng: f"{rng.randint(0, 99)}.{rng.randint(1, 9)}",
    "year": lambda rng: str(rng.randint(1950, 2030)),
    "ordinal": lambda rng: (lambda d: f"{d}{_suffix(d)}")(rng.randint(1, 31)),
    "time": _time, "duration": _duration, "date": _date, "phone": _phone, "money": _money,
}

_SLOT_RE = re.compile(r"\{(\w+)\}")


def fill(template: str, rng: random.Random) -> str:
    """Replace each `{slot}` of a template with a value drawn from SLOTS (left to right)."""
    return _SLOT_RE.sub(lambda m: SLOTS[m.group(1)](rng), template)


def build_sentences(seed: int = 0) -> list[str]:
    """Distinct normalized sentences of every family, in a deterministic order for `seed`.

    Each family fills its templates until it has its quota of distinct sentences (or gives up
    after 30 tries per sentence, for families with few combinations).
    """
    rng = random.Random(seed)
    out: dict[str, None] = {}
    for _family, quota, templates in FAMILIES:
        got, tries = 0, 0
        while got < quota and tries < 30 * quota:
            tries += 1
            sentence = normalize_text(fill(rng.choice(templates), rng))
            if sentence and sentence not in out:
                out[sentence] = None
                got += 1
    return list(out)


def split_of(sentence: str) -> str:
    """'train', 'dev' or 'test' from a stable (seed-free) hash of the normalized sentence."""
    digest = hashlib.blake2b(normalize_text(sentence).encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
    if u < TEST_FRACTION:
        return "test"
    return "dev" if u < TEST_FRACTION + DEV_FRACTION else "train"


@dataclass(frozen=True)
class SentenceSplit:
    """Disjoint sentence sets; no test or dev sentence appears in train."""

    train: tuple[str, ...]
    dev: tuple[str, ...]
    test: tuple[str, ...]


def split_sentences(sentences: Iterable[str]) -> SentenceSplit:
    parts: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for s in dict.fromkeys(sentences):
        parts[split_of(s)].append(s)
    return SentenceSplit(tuple(parts["train"]), tuple(parts["dev"]), tuple(parts["test"]))


def vocabulary(sentences: Iterable[str]) -> dict[str, int]:
    """Word -> count over the sentences (insertion order = first occurrence)."""
    counts: dict[str, int] = {}
    for s in sentences:
        for w in s.split():
            counts[w] = counts.get(w, 0) + 1
    return counts
