"""The synthetic text corpus: size, vocabulary, determinism and a leak-free split."""
import pytest

from workbench.data import build_sentences, split_sentences, vocabulary
from workbench.data.corpus import pluralize, split_of
from workbench.models.base import VOCAB


@pytest.fixture(scope="module")
def seed0() -> list[str]:
    return build_sentences(0)


@pytest.fixture(scope="module")
def seed1() -> list[str]:
    return build_sentences(1)


def test_corpus_is_big_deterministic_and_in_vocabulary(seed0, seed1):
    sentences = seed0
    assert len(sentences) == len(set(sentences)) >= 4000
    assert build_sentences(0) == sentences
    assert seed1 != sentences
    assert len(vocabulary(sentences)) >= 1000
    assert set("".join(sentences)) <= set(VOCAB[1:])
    assert any("set a timer for twenty minutes" == s for s in sentences)


def test_split_has_no_overlap_and_enough_train(seed0):
    split = split_sentences(seed0)
    train, dev, test = set(split.train), set(split.dev), set(split.test)
    assert not (train & test) and not (train & dev) and not (dev & test)
    assert len(train) >= 3000 and len(test) >= 150 and len(dev) >= 150


def test_split_is_by_sentence_not_by_seed(seed0, seed1):
    # The shipped test set was built with seed 0; a corpus built with another seed must still
    # keep every one of those sentences out of train.
    test0 = set(split_sentences(seed0).test)
    split1 = split_sentences(seed1)
    assert not (test0 & set(split1.train))
    assert all(split_of(s) == "test" for s in test0)


def test_pluralize():
    assert [pluralize(w) for w in ("fox", "mouse", "puppy", "day", "bakery", "coffee shop")] == \
           ["foxes", "mice", "puppies", "days", "bakeries", "coffee shops"]
