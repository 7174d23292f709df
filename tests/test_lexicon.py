"""Lexicon correction: close misspellings snap to known words; unknown words far from all stay."""
from workbench.lexicon import Lexicon, max_edits, training_lexicon


def test_snaps_close_misspellings_and_keeps_far_words():
    lex = Lexicon.from_texts(["please enter your extension", "followed by the pound key"])
    assert lex.correct("plese entr your extention") == "please enter your extension"
    assert lex.correct("zebra") == "zebra"          # nothing within 2 edits: kept as is
    assert lex.correct("") == ""


def test_ties_prefer_the_more_frequent_word():
    lex = Lexicon.from_texts(["cat cat cat", "car"])
    assert lex.correct_word("caz") == "cat"


def test_edit_budget_grows_with_length():
    assert (max_edits("key"), max_edits("extent"), max_edits("conference")) == (1, 2, 3)


def test_training_lexicon_counts_only_training_text():
    from collections import Counter

    from workbench.data import build_sentences, split_sentences
    from workbench.paths import DATA_DIR
    split = split_sentences(build_sentences(0))
    texts = list(split.train) + (DATA_DIR / "lexicon" / "finetune_words.txt").read_text().split("\n")
    lex = training_lexicon()
    assert lex.counts == dict(Counter(w for t in texts for w in t.split()))
    # Held-out sentences contribute nothing: a word counted from test sentences alone would differ.
    assert len(lex) > 1000
