"""Text normalization: spoken forms of numbers, times, ordinals, symbols; only VOCAB characters."""
import pytest

from workbench.data import normalize_text
from workbench.models.base import VOCAB

CASES = [
    ("Set a timer for 20 minutes.", "set a timer for twenty minutes"),
    ("Turn off the KITCHEN lights!", "turn off the kitchen lights"),
    ("It's 3:45 PM", "it's three forty five p m"),
    ("Wake me at 7am", "wake me at seven a m"),
    ("at 3:05 a.m.", "at three oh five a m"),
    ("Meet at 10:00", "meet at ten o'clock"),
    ("the 2nd and the 21st", "the second and the twenty first"),
    ("50% off", "fifty percent off"),
    ("$5.50 or £1", "five dollars fifty cents or one pound"),
    ("1,250 people", "one thousand two hundred and fifty people"),
    ("in 1999", "in nineteen ninety nine"),
    ("28.8 kilobit", "twenty eight point eight kilobit"),
    ("-5 degrees", "minus five degrees"),
    ("21°C", "twenty one degrees celsius"),
    ("rock & roll", "rock and roll"),
    ("Dr. Smith", "doctor smith"),
    ("U.S.A.", "u s a"),
    ("the 1990s", "the nineteen nineties"),
    ("Café  déjà   vu", "cafe deja vu"),
    ("'quoted' don't", "quoted don't"),
    ("dial 5551234", "dial five five five one two three four"),
    ("", ""),
]


@pytest.mark.parametrize("written, spoken", CASES)
def test_spoken_form(written: str, spoken: str):
    assert normalize_text(written) == spoken


@pytest.mark.parametrize("written, _", CASES)
def test_idempotent_and_in_vocabulary(written: str, _):
    once = normalize_text(written)
    assert normalize_text(once) == once
    assert set(once) <= set(VOCAB[1:])
    assert "  " not in once and once == once.strip()


def test_apostrophes_only_inside_words():
    assert normalize_text("the dogs' toys 'n' things o'clock") == "the dogs toys n things o'clock"
