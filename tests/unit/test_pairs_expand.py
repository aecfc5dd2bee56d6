from itertools import islice

import pytest

from models.datasets import load_catalog, load_policies
from models.expand import products, series_products, synthetic_products
from models.pairs import INSTRUCTIONS, build_queries, catalog_docs, policy_docs, split_queries, training_groups


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


def test_policy_queries_judge_passages_of_their_policy(queries):
    policy = [q for q in queries if q.kind in ("policy", "passage")]
    assert len(policy) >= 100 and all(q.index == "policy" for q in policy)
    for q in policy:
        policy_id = q.anchor.split(":", 1)[1]
        assert {d.split("#")[0] for d in q.relevance} == {policy_id}
        assert sum(r == 2 for r in q.relevance.values()) == 1
        assert all(h.split("#")[0] != policy_id for h in q.hard_negatives)


def test_split_by_anchor_is_disjoint(queries):
    train, held = split_queries(queries)
    assert held and train
    assert not {q.anchor for q in train} & {q.anchor for q in held}


def test_training_groups_put_the_best_document_first(queries):
    docs = {d.id: d for d in catalog_docs(load_catalog()) + policy_docs(load_policies())}
    text_to_id = {d.text: d.id for d in docs.values()}
    by_text = {q.text: q for q in queries}
    groups = training_groups(queries[:300], docs, group_size=8)
    assert len(groups) == 300
    for query, group in groups:
        q = by_text[query]
        ids = [text_to_id[t] for t in group]
        assert len(ids) == 8 == len(set(ids))
        best = max(q.relevance.values())
        assert q.relevance[ids[0]] == best
        assert all(q.relevance.get(i, 0) < best for i in ids[1:])


def test_injected_documents_are_negatives_that_repeat_the_query(queries):
    docs = {d.id: d for d in catalog_docs(load_catalog()) + policy_docs(load_policies())}
    real = {d.text for d in docs.values()}
    injected = training_groups(queries[:200], docs, group_size=8, injected=0.5)
    poisoned = [(query, group) for query, group in injected if group[-1] not in real]
    assert 60 <= len(poisoned) <= 140  # about half of the groups
    for query, group in poisoned:
        assert group[0] in real and all(t in real for t in group[:-1])  # the best document stays first
        assert query in group[-1] and any(i in group[-1] for i in INSTRUCTIONS)
    clean = training_groups(queries[:200], docs, group_size=8)
    assert all(t in real for _, group in clean for t in group)


def test_products_expand_every_book_of_every_edition():
    catalog = load_catalog()
    expected = sum(1 if e.edition == "box_set" else e.books for s in catalog for e in s.editions)
    rows = list(products(catalog))
    assert len(rows) == expected
    assert len({p.id for p in rows}) == len(rows)
    berserk = [p for p in series_products(next(s for s in catalog if s.title == "Berserk"))]
    assert all(p.author == "Kentaro Miura" for p in berserk)
    editions = {(s.id, e.name): e for s in catalog for e in s.editions}
    for p in rows:
        edition = editions[(p.series_id, p.edition_name)]
        assert (p.price, p.in_stock) == (edition.price, edition.in_stock)


def test_expansion_is_seeded_and_scales():
    a = [p.model_dump() for p in islice(synthetic_products(10**6, seed=3), 500)]
    b = [p.model_dump() for p in islice(synthetic_products(10**6, seed=3), 500)]
    assert a == b and all(p["synthetic"] for p in a)
    assert len({p.id for p in synthetic_products(20000, seed=1)}) == 20000
