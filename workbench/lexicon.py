"""Lexicon correction after greedy CTC decoding: snap out-of-lexicon words to the nearest known word.

Most word errors of a character CTC model are misspellings ("extention" for "extension"): one or
two wrong characters make the whole word wrong. A lexicon built from TRAINING text only (the
synthetic corpus sentences and the real fine-tune transcripts; never the test transcripts) fixes
those: a hypothesis word not in the lexicon is replaced by the closest lexicon word when the edit
distance is small for its length (<= 1 edit up to 4 letters, <= 2 up to 8, <= 3 beyond), ties
broken by word frequency. Words with no close neighbour are kept as they are, so genuinely new
words survive. Edit distances come from rapidfuzz (already a dependency of jiwer).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from collections.abc import Iterable

from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from workbench.data import build_sentences, split_sentences
from workbench.paths import DATA_DIR


def max_edits(word: str) -> int:
    return 1 if len(word) <= 4 else 2 if len(word) <= 8 else 3


@dataclass(frozen=True)
class Lexicon:
    counts: dict[str, int]
    _words: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> Lexicon:
        counts = Counter(w for t in texts for w in t.split())
        return cls(dict(counts), tuple(sorted(counts, key=lambda w: -counts[w])))

    def __contains__(self, word: str) -> bool:
        return word in self.counts

    def __len__(self) -> int:
        return len(self.counts)

    def correct_word(self, word: str) -> str:
        if word in self.counts or not word:
            return word
        limit = max_edits(word)
        matches = process.extract(word, self._words, scorer=Levenshtein.distance,
                                  score_cutoff=limit, limit=8)
        if not matches:
            return word
        best = min(matches, key=lambda m: (m[1], -self.counts[m[0]]))
        return best[0]

    def correct(self, text: str) -> str:
        """Snap every out-of-lexicon word of `text` to its nearest lexicon word (if close)."""
        return " ".join(self.correct_word(w) for w in text.split())


def training_lexicon() -> Lexicon:
    """The demo's lexicon: the synthetic corpus sentences + the real fine-tune transcripts.

    Both come from training data only. The fine-tune transcripts are read from the shipped list
    data/lexicon/finetune_words.txt (written when the demo is trained) so no corpus build is needed.
    """
    texts = list(split_sentences(build_sentences(0)).train)  # train side only: never dev / test
    extra = DATA_DIR / "lexicon" / "finetune_words.txt"
    if extra.is_file():
        texts += extra.read_text().split("\n")
    return Lexicon.from_texts(texts)
