from itertools import islice

import pytest

from models.datasets import load_catalog, load_policies
from models.expand import products, series_products, synthetic_products
from models.pairs import build_queries, catalog_docs, policy_docs, split_queries, training_pairs


@pytest.fixture(scope="module")
def queries():
    return build_queries(load_catalog(), load_policies())


def test_like_queries_never_answer_with_the_named_series(queries):
    catalog = {s.id: s for s in load_catalog()}
    likes = [q for q in queries if q.kind == "like"]
    assert len(likes) >= 300
    for q in likes:
        named = q.anchor.split(":", 1)[1]
        assert named not in q.relevance
        assert named in q.hard_negatives
        for doc_id, rel in q.relevance.items():
            shared = set(catalog[doc_id].genres) & set(catalog[named].genres)
            assert len(shared) >= 2
            assert (rel == 2) == (catalog[doc_id].demographic == catalog[named].demographic)


def test_author_queries_grade_the_authors_works(queries):
    catalog = load_catalog()
    for q in (q for q in queries if q.kind == "author"):
        author = q.anchor.split(":", 1)[1]
        assert set(q.relevance) == {s.id for s in catalog if s.author == author}


def test_policy_queries_stay_in_the_policy_index(queries):
    policy = [q for q in queries if q.kind == "policy"]
    assert policy and all(q.index == "policy" for q in policy)
    for q in policy:
        assert q.relevance[q.anchor.split(":", 1)[1]] == 2


def test_split_by_anchor_is_disjoint(queries):
    train, held = split_queries(queries)
    assert held and train
    assert not {q.anchor for q in train} & {q.anchor for q in held}


def test_training_pairs_have_hard_negatives_and_graded_targets(queries):
    docs = {d.id: d for d in catalog_docs(load_catalog()) + policy_docs(load_policies())}
    pairs = training_pairs(queries[:200], docs)
    targets = {t for _, _, t in pairs}
    assert targets <= {0.0, 0.5, 1.0} and {0.0, 1.0} <= targets
    negatives = sum(t == 0.0 for _, _, t in pairs)
    assert negatives >= len(pairs) / 4


def test_products_expand_every_book_of_every_edition():
    catalog = load_catalog()
    expected = sum(1 if e.edition == "box_set" else e.books for s in catalog for e in s.editions)
    rows = list(products(catalog))
    assert len(rows) == expected
    assert len({p.id for p in rows}) == len(rows)
    berserk = [p for p in series_products(next(s for s in catalog if s.title == "Berserk"))]
    assert all(p.author == "Kentaro Miura" for p in berserk)
    assert all(not p.in_stock for p in rows if not next(e for s in catalog if s.id == p.series_id
                                                       for e in s.editions if e.edition == p.edition).in_stock)


def test_expansion_is_seeded_and_scales():
    a = [p.model_dump() for p in islice(synthetic_products(10**6, seed=3), 500)]
    b = [p.model_dump() for p in islice(synthetic_products(10**6, seed=3), 500)]
    assert a == b and all(p["synthetic"] for p in a)
    assert len({p["id"] for p in synthetic_products(20000, seed=1)}) == 20000
