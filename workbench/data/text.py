"""Transcript normalization to the spoken form the CTC models emit.

The model's alphabet (workbench.models.base.VOCAB) is space, apostrophe and a-z, so every written
form is turned into the words a speaker says: "3:45 pm" -> "three forty five p m", "2nd" -> "second",
"20%" -> "twenty percent", "$5.50" -> "five dollars fifty cents". The same function is applied to
references at evaluation time and to the text the synthesizers read, so audio and label agree.
num2words gives the number words (British "one hundred and five" style, used consistently).
"""
from __future__ import annotations

import re
import unicodedata

from num2words import num2words

from workbench.errors import DataError

# Spoken forms of abbreviations that end in a period (checked case-insensitively, whole word).
_ABBREVIATIONS = {
    "mr": "mister", "mrs": "missus", "dr": "doctor", "prof": "professor",
    "mt": "mount", "jr": "junior", "sr": "senior", "vs": "versus", "etc": "et cetera",
    "approx": "approximately",
}
# Units written after a number: "5 km" -> "five kilometers" (singular after exactly 1).
# Ambiguous one-letter forms ("in", "s", "h", "l") are left out: "5 in the morning" is not inches.
_UNITS = {
    "km": ("kilometer", "kilometers"), "m": ("meter", "meters"), "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"), "kg": ("kilogram", "kilograms"), "g": ("gram", "grams"),
    "mg": ("milligram", "milligrams"), "ml": ("milliliter", "milliliters"),
    "mph": ("mile per hour", "miles per hour"), "km/h": ("kilometer per hour", "kilometers per hour"),
    "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"), "oz": ("ounce", "ounces"),
    "ft": ("foot", "feet"), "hz": ("hertz", "hertz"), "khz": ("kilohertz", "kilohertz"),
    "kb": ("kilobyte", "kilobytes"), "mb": ("megabyte", "megabytes"), "gb": ("gigabyte", "gigabytes"),
    "sec": ("second", "seconds"), "min": ("minute", "minutes"), "hrs": ("hour", "hours"),
    "°c": ("degree celsius", "degrees celsius"), "°f": ("degree fahrenheit", "degrees fahrenheit"),
    "°": ("degree", "degrees"),
}
_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
               "€": ("euro", "euros", "cent", "cents")}
_SYMBOLS = {"&": " and ", "+": " plus ", "@": " at ", "=": " equals "}

_NUM = r"\d+(?:\.\d+)?"


def _words(n: int | float) -> str:
    return num2words(n).replace("-", " ").replace(",", "")


def _integer(digits: str) -> str:
    """Digit string -> words. Leading zeros or >= 7 digits read digit by digit (codes, phones);
    1100-2099 read as years ("nineteen ninety nine"), which is how people say four-digit numbers."""
    if (len(digits) > 1 and digits.startswith("0")) or len(digits) >= 7:
        return " ".join("zero" if d == "0" else _words(int(d)) for d in digits)
    value = int(digits)
    if len(digits) == 4 and 1100 <= value <= 2099:
        return num2words(value, to="year").replace("-", " ")
    return _words(value)


def _number(text: str) -> str:
    """'28.8' -> 'twenty eight point eight'; '7' -> 'seven'."""
    whole, _, frac = text.partition(".")
    out = _integer(whole)
    if frac:
        out += " point " + " ".join("zero" if d == "0" else _words(int(d)) for d in frac)
    return out


def _time(m: re.Match) -> str:
    hour, minute, suffix = int(m.group(1)), int(m.group(2)), m.group(3)
    words = _words(hour)
    if minute == 0:
        words += "" if suffix else " o'clock"
    elif minute < 10:
        words += " oh " + _words(minute)
    else:
        words += " " + _words(minute)
    if suffix:
        words += f" {suffix[0].lower()} m"
    return f" {words} "


def _currency(m: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCIES[m.group(1)]
    whole = int(m.group(2).replace(",", ""))
    out = f"{_words(whole)} {one if whole == 1 else many}"
    if m.group(3):
        cents = int(m.group(3).ljust(2, "0")[:2])
        if cents:
            out += f" {_words(cents)} {sub_one if cents == 1 else sub_many}"
    if m.group(4):  # "$5 million" -> "five million dollars"
        out = f"{_words(whole)} {m.group(4).strip()} {many}"
    return f" {out} "


def _decade(m: re.Match) -> str:
    words = _integer(m.group(1))
    return " " + (words[:-1] + "ies" if words.endswith("y") else words + "s") + " "


def _ordinal(m: re.Match) -> str:
    return " " + num2words(int(m.group(1)), to="ordinal").replace("-", " ").replace(",", "") + " "


def _with_unit(m: re.Match) -> str:
    one, many = _UNITS[m.group(2).lower()]
    return f" {_number(m.group(1))} {one if m.group(1) == '1' else many} "


_UNIT_RE = "|".join(sorted((re.escape(u) for u in _UNITS), key=len, reverse=True))
_PATTERNS: tuple[tuple[re.Pattern, object], ...] = (
    # abbreviations with a period: "Dr. Smith" -> "doctor Smith"
    (re.compile(r"\b(" + "|".join(_ABBREVIATIONS) + r")\.(?=\s|$)", re.I),
     lambda m: _ABBREVIATIONS[m.group(1).lower()]),
    # times, optionally with am/pm: "3:45", "10:00 p.m."
    (re.compile(r"\b(\d{1,2}):([0-5]\d)\b(?:\s*([ap])\.?\s?m\b\.?)?", re.I), _time),
    # "7pm", "7 a.m." -> "seven p m"
    (re.compile(r"\b(\d{1,2})\s*([ap])\.?\s?m\b\.?", re.I),
     lambda m: f" {_words(int(m.group(1)))} {m.group(2).lower()} m "),
    # dotted letters: "A.M.", "U.S.A." -> "a m", "u s a"
    (re.compile(r"\b((?:[a-z]\.){2,})", re.I), lambda m: " " + " ".join(m.group(1).replace(".", "")) + " "),
    # thousands separators: "1,250,000" -> "one million two hundred and fifty thousand"
    (re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d,]|\.\d)"),
     lambda m: f" {_words(int(m.group(0).replace(',', '')))} "),
    # decades: "the 1990s", "80s" -> "nineteen nineties", "eighties"
    (re.compile(r"\b(1[1-9]\d0|20[0-9]0|[1-9]0)'?s\b"), _decade),
    # money: "$5", "$5.50", "£3", "$2 million"
    (re.compile(r"([$£€])\s?(\d[\d,]*)(?:\.(\d{1,2}))?(\s(?:thousand|million|billion)\b)?"),
     _currency),
    (re.compile(r"(" + _NUM + r")\s?%"), lambda m: f" {_number(m.group(1))} percent "),
    (re.compile(r"\b(\d+)(?:st|nd|rd|th)\b", re.I), _ordinal),
    (re.compile(r"(?<![\w.])(" + _NUM + r")\s?(" + _UNIT_RE + r")(?![\w°])", re.I), _with_unit),
    (re.compile(r"(?:#|\bno\.)\s?(?=\d)", re.I), lambda m: " number "),
    (re.compile(r"(?<![\w.])-(?=\d)"), lambda m: " minus "),
    (re.compile(r"\d+(?:\.\d+)?"), lambda m: f" {_number(m.group(0))} "),
)


def normalize_text(s: str) -> str:
    """Written text -> spoken lowercase words over the model alphabet (space, apostrophe, a-z).

    Apostrophes survive only inside words ("don't", "o'clock"); other punctuation becomes a word
    break; accents are stripped ("café" -> "cafe"); whitespace is collapsed. Idempotent.
    """
    if not isinstance(s, str):
        raise DataError(f"normalize_text: expected a transcript string, got {type(s).__name__}.")
    s = unicodedata.normalize("NFKC", s)
    s = s.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    for pattern, repl in _PATTERNS:
        s = pattern.sub(repl, s)
    for symbol, word in _SYMBOLS.items():
        s = s.replace(symbol, word)
    s = "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))
    s = s.lower()
    s = re.sub(r"[^a-z' ]+", " ", s)
    s = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", s)  # apostrophes only inside words
    return " ".join(s.split())
