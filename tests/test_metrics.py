import numpy as np
import pytest

from model import evaluate, metrics
from model.vocab import SPECIALS, UNK, Vocabulary

VOCAB = Vocabulary(SPECIALS + ("the", "then", "cat", "car"))
THE, THEN, CAT, CAR = 4, 5, 6, 7


def scores(**p):
    s = np.full(len(VOCAB), -np.inf)
    for w, v in p.items():
        s[VOCAB.id(w)] = np.log(v)
    return s


def test_topk_breaks_ties_to_the_more_frequent_word():
    s = np.array([0.0, 1.0, 3.0, 3.0, 2.0, -np.inf])
    assert list(metrics.topk_ids(s, 3)) == [2, 3, 4]
    assert list(metrics.topk_ids(np.array([-np.inf, 1.0]), 2)) == [1]


def test_perplexity_exact():
    assert metrics.perplexity(2 * np.log(4.0), 2) == pytest.approx(4.0)


def test_keystroke_savings_on_a_made_up_sentence():
    idx = metrics.PrefixIndex(VOCAB)
    s = scores(cat=0.4, car=0.3, the=0.2, then=0.1)
    # "then": not in the top 3 before any letter; after "t" only the/then remain -> taken.
    assert metrics.word_keystrokes("then", THEN, s, idx) == (3, 5)
    # "cat": suggested before the first letter; one tap types the word and its space.
    assert metrics.word_keystrokes("cat", CAT, s, idx) == (3, 4)
    # out of vocabulary: typed in full.
    assert metrics.word_keystrokes("dog", UNK, s, idx) == (0, 4)
    lp = np.stack([s, s, s])
    assert metrics.message_keystrokes(["then", "cat", "dog"], [THEN, CAT, UNK], lp, idx) == (6, 13)


def test_prefix_index_completes_partial_words():
    idx = metrics.PrefixIndex(VOCAB)
    s = scores(cat=0.4, car=0.3, the=0.2, then=0.1)
    assert list(idx.suggest(s, "ca")) == [CAT, CAR]
    assert list(idx.suggest(s, "the", k=1)) == [THE]
    assert list(idx.suggest(s, "x")) == []


def test_harness_counts_hits_eos_and_unk_targets():
    # message: <bos> then <unk> <eos>; the scorer puts "then" 2nd, <unk> 1st, <eos> 4th.
    row0 = scores(cat=0.4, then=0.3, the=0.2, car=0.1)
    row1 = np.log(np.array([1e-9, 0.5, 1e-9, 0.1, 0.2, 0.1, 0.05, 0.05]))
    row2 = scores(cat=0.4, car=0.3, the=0.2, then=0.05)
    row2[3] = np.log(0.05)  # <eos> ties 4th with "then": lower id (<eos>) wins, still 4th
    msg = np.array([2, THEN, UNK, 3])

    def scorer(messages):
        yield np.stack([row0, row1, row2])

    q = evaluate.evaluate(scorer, [msg], [["then", "zzz"]], VOCAB)
    assert q.words == 3
    assert q.top1 == pytest.approx(1 / 3)  # only <unk>
    assert q.top3 == pytest.approx(2 / 3)  # "then" and <unk>
    nll = -(np.log(0.3) + np.log(0.5) + np.log(0.05))
    assert q.perplexity == pytest.approx(np.exp(nll / 3))
    # "then" is in the top 3 before any letter: saves 4 of 5; "zzz" is OOV: 0 of 4.
    assert q.keystroke_savings == pytest.approx(4 / 9)
