import pytest

from model import text
from model.vocab import BOS, EOS, SPECIALS, UNK, Vocabulary, build_vocabulary


def test_normalise_folds_case_accents_quotes_and_space():
    assert text.normalise("  Café\u2019s   DÉJÀ\tvu ") == "cafe's deja vu"


def test_words_keeps_apostrophes_inside_and_drops_punctuation():
    assert text.words("Don't stop!! 'quoted' it's 9pm... :)") == [
        "don't",
        "stop",
        "quoted",
        "it's",
        "9pm",
    ]


def test_public_vocabulary_shape_and_order():
    v = build_vocabulary(10_000)
    assert len(v) == 10_004
    assert v.tokens[:4] == SPECIALS
    # wordfreq order: the most frequent English word first.
    assert v.tokens[4] == "the"
    assert all(text.words(w) == [w] for w in v.tokens[4:])


def test_round_trip_and_oov_mapping():
    v = build_vocabulary(10_000)
    ids = v.encode("Hello there, how are you?")
    assert ids[0] == BOS and ids[-1] == EOS
    assert v.decode(ids) == "hello there how are you"
    oov = v.encode("hello zzqxjw", bos=False, eos=False)
    assert oov[1] == UNK and oov[0] != UNK
    assert "zzqxjw" not in v and "hello" in v


def test_vocabulary_rejects_bad_tokens():
    with pytest.raises(ValueError, match="must start"):
        Vocabulary(("a", "b"))
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary(SPECIALS + ("a", "a"))
