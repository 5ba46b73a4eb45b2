import kenlm
import numpy as np
import pytest

from model import ngram
from model.vocab import BOS, EOS, UNK, build_vocabulary


@pytest.fixture(scope="module")
def lm_and_arpa(tmp_path_factory):
    vocab = build_vocabulary(10_000)
    lines = [
        "how are you",
        "how are you doing",
        "are you there",
        "you are here",
        "how is it going",
        "it is going well",
        "zzqx is here",
    ] * 3
    msgs = [np.array(vocab.encode(s), np.int32) for s in lines]
    arpa = ngram.train_arpa(msgs, vocab)
    path = tmp_path_factory.mktemp("ngram") / "lm.arpa"
    path.write_text(arpa, encoding="latin-1")
    return vocab, ngram.NgramLM.load(path, vocab), kenlm.Model(str(path))


def test_dense_distribution_matches_kenlm(lm_and_arpa):
    vocab, lm, km = lm_and_arpa
    for sentence in ["how are you doing", "you is going", "it are here well", "zzqx are you"]:
        ids = vocab.encode(sentence)
        mine = lm.message_log_probs(np.array(ids)) / np.log(10)
        theirs = [
            s
            for s, _, _ in km.full_scores(
                " ".join("<unk>" if i == UNK else vocab.tokens[i] for i in ids[1:-1])
            )
        ]
        got = [mine[t, lm.target_for_scoring(ids[t + 1])] for t in range(len(ids) - 1)]
        np.testing.assert_allclose(got, theirs, atol=1e-5)


def test_distribution_sums_to_one_over_seen_words(lm_and_arpa):
    vocab, lm, _ = lm_and_arpa
    for w1, w2 in [(None, BOS), (vocab.id("how"), vocab.id("are")), (BOS, vocab.id("you"))]:
        p = 10 ** lm.log10_dist(w1, w2)
        assert p.sum() == pytest.approx(1.0, abs=1e-3)
    assert not lm.seen()[vocab.id("house")]
    assert lm.seen()[EOS] and lm.seen()[UNK]
