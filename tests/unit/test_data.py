"""The authored datasets: valid, big enough, consistent, and splits without leakage."""
import re
from collections import Counter

import pytest

from models import INTENT_LABELS
from models.datasets import SPLITS, load_catalog, load_intents, load_policies
from models.paths import DATA_DIR
from models.splits import cross_split_leaks, read_authored, split_examples


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def splits():
    return {s: load_intents(s) for s in SPLITS}


def test_catalog_size_and_uniqueness(catalog):
    assert len(catalog) >= 300
    ids = [s.id for s in catalog]
    assert len(ids) == len(set(ids))
    titles = [s.title.lower() for s in catalog]
    assert len(titles) == len(set(titles)), [t for t, n in Counter(titles).items() if n > 1]


def test_catalog_covers_every_demographic_and_status(catalog):
    assert {s.demographic for s in catalog} == {"shonen", "shojo", "seinen", "josei", "kodomo"}
    assert {s.status for s in catalog} == {"ongoing", "completed"}
    assert sum("dark fantasy" in s.genres for s in catalog) >= 10


def test_catalog_entries_are_well_formed(catalog):
    for s in catalog:
        sentences = [x for x in re.split(r"(?<=[.!?])\s+", s.synopsis.strip()) if x]
        assert 2 <= len(sentences) <= 5, (s.id, len(sentences))
        assert 1 <= len(s.editions) <= 4
        assert len({e.edition for e in s.editions}) == len(s.editions) or len(s.editions) > 1
        for e in s.editions:
            assert 1 <= e.price < 500, (s.id, e)
            if e.edition == "standard":
                assert e.books <= s.volumes, (s.id, e)


def test_known_facts(catalog):
    """Spot checks of well-known facts (the data README says how the catalog was written)."""
    by_title = {s.title: s for s in catalog}
    assert by_title["Berserk"].author == "Kentaro Miura" and by_title["Berserk"].demographic == "seinen"
    assert by_title["Monster"].volumes == 18 and by_title["Monster"].status == "completed"
    assert by_title["Death Note"].volumes == 12
    assert by_title["Fullmetal Alchemist"].volumes == 27
    assert by_title["One Piece"].status == "ongoing"


def test_policies(catalog):
    policies = load_policies()
    assert len(policies) >= 25
    ids = {p.id for p in policies}
    for required in ("shipping-canada", "shipping-international", "damaged-items", "returns-policy", "refund-timing",
                     "order-tracking", "order-cancellations", "preorders", "gift-cards", "privacy-policy"):
        assert required in ids
    canada = next(p for p in policies if p.id == "shipping-canada")
    assert "Canada" in canada.body and re.search(r"\$\d+\.\d\d", canada.body)


def test_intents_size_and_balance(splits):
    everything = [ex for rows in splits.values() for ex in rows]
    assert len(everything) >= 3000
    counts = Counter(ex.label for ex in everything)
    assert set(counts) == set(INTENT_LABELS)
    assert min(counts.values()) >= 300, counts
    for split, rows in splits.items():
        split_counts = Counter(ex.label for ex in rows)
        assert set(split_counts) == set(INTENT_LABELS), split


def test_no_near_duplicates_across_splits(splits):
    leaks = cross_split_leaks({s: [ex.text for ex in rows] for s, rows in splits.items()})
    assert leaks == [], leaks[:5]


def test_no_text_in_two_splits(splits):
    seen = {}
    for split, rows in splits.items():
        for ex in rows:
            key = ex.text.lower().strip()
            assert seen.setdefault(key, split) == split, ex.text


def test_committed_splits_are_reproducible(splits):
    """The split files are exactly what `mangaassist data split` makes from authored/ with the seed."""
    pooled, train_only = read_authored(DATA_DIR / "intents")
    rebuilt = split_examples(pooled, train_only=train_only)
    for split in SPLITS:
        assert [r["text"] for r in rebuilt[split]] == [ex.text for ex in splits[split]]


CHITCHAT = ["hello there", "thanks a lot", "good night", "who made you", "is it raining", "what is 2+2",
            "see you tomorrow", "you are funny", "are you a bot", "morning!"]


def test_train_only_messages_join_train_and_leave_the_split_alone():
    pooled = [{"text": f"where is my order number {i} {w}", "label": "order_status"} for i, w in
              enumerate(["today", "please", "asap", "again", "still", "yet", "now", "hmm", "ok", "sigh"] * 2)]
    pooled += [{"text": t, "label": "chitchat"} for t in CHITCHAT]
    extra = [{"text": "who won the game last night", "label": "chitchat"},
             {"text": "Thanks a lot!", "label": "chitchat"}]  # an exact duplicate after normalization: dropped
    before = split_examples(pooled)
    after = split_examples(pooled, train_only=extra)
    assert after["validation"] == before["validation"] and after["test"] == before["test"]
    assert after["train"] == before["train"] + extra[:1]


def test_train_only_message_like_a_held_out_one_is_refused():
    pooled = [{"text": t, "label": "chitchat"} for t in CHITCHAT + ["do you like cats", "bye bye"]]
    held_out = split_examples(pooled)["test"][0]["text"]
    with pytest.raises(ValueError, match="near-duplicates of validation/test"):
        split_examples(pooled, train_only=[{"text": held_out + " lol", "label": "chitchat"}])
