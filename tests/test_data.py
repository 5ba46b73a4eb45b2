from model import corpora, data
from model.config import DataConfig


def test_split_is_deterministic_and_follows_the_configured_shares():
    cfg = DataConfig.default()
    users = [f"user-{i}" for i in range(5000)]
    a = [data.split_of(u, cfg) for u in users]
    assert a == [data.split_of(u, cfg) for u in users]
    share = {s: a.count(s) / len(a) for s in data.SPLITS}
    assert abs(share["public"] - 0.15) < 0.02
    assert abs(share["federated"] - 0.70) < 0.02
    assert abs(share["heldout"] - 0.15) < 0.02


def test_chitchat_splits_are_disjoint_capped_and_real(tiny_data):
    splits = data.load_chitchat(tiny_data)
    names = [set(splits[s]) for s in data.SPLITS]
    assert all(names), "every split has users"
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    for s in data.SPLITS:
        for user, msgs in splits[s].items():
            assert data.split_of(user, tiny_data) == s
            assert 0 < len(msgs) <= tiny_data.max_messages_per_user


def test_one_turn_conversations_are_dropped():
    all_senders = {u for u, _ in corpora.chitchat_messages(min_turns=1)}
    kept = {u for u, _ in corpora.chitchat_messages(min_turns=2)}
    assert kept < all_senders  # some senders only ever wrote a lone greeting
    assert len(all_senders) == 1315


def test_shakespeare_by_speaker():
    first = {}
    for user, speech in corpora.shakespeare_messages():
        first.setdefault(user, speech)
        if len(first) > 50:
            break
    assert any(u.startswith("hamlet/") or u.count("/") == 1 for u in first)
    assert all(s.strip() and "**" not in s for s in first.values())


def test_oov_rate_counts_only_words():
    import numpy as np

    msgs = [np.array([2, 1, 5, 3]), np.array([2, 7, 3])]
    assert data.oov_rate(msgs) == 1 / 3


def test_tiny_corpus_roles(tiny_corpus):
    roles = set(tiny_corpus.tokens)
    assert roles == {"public_train", "public_valid", "federated", "heldout", "shakespeare"}
    assert not set(tiny_corpus.users["public_train"]) & set(tiny_corpus.users["public_valid"])
    for role, oov in tiny_corpus.oov().items():
        assert 0.0 < oov < 0.2, role
