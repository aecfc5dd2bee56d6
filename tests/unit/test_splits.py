from models.splits import cross_split_leaks, near_duplicate_clusters, normalize, split_examples


def test_normalize_masks_numbers_and_punctuation():
    assert normalize("Where is my order #4417-2210?!") == normalize("where is my order 99 1")


def test_near_duplicates_cluster_together():
    texts = ["where is my order 4417-2210", "where is my order #88213945", "do you ship to canada",
             "what is the price of the berserk deluxe edition"]
    clusters = near_duplicate_clusters(texts)
    assert clusters[0] == clusters[1]
    assert len({clusters[1], clusters[2], clusters[3]}) == 3


def test_split_keeps_near_duplicate_groups_in_one_split():
    examples = []
    for i in range(60):
        examples.append({"text": f"where is my order number {i}", "label": "order_status"})  # one cluster
        examples.append({"text": f"unique message {'abcdefghij'[i % 10]} {chr(97 + i % 26) * (i % 7 + 3)} x{i}", "label": "chitchat"})
    splits = split_examples(examples, seed=1)
    holders = [s for s, rows in splits.items() if any(r["text"].startswith("where is my order") for r in rows)]
    assert len(holders) == 1
    assert cross_split_leaks({s: [r["text"] for r in rows] for s, rows in splits.items()}) == []


def test_split_is_deterministic_and_drops_exact_duplicates():
    examples = [{"text": f"message number {w}", "label": "chitchat"} for w in
                ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]]
    a = split_examples(examples + examples[:3], seed=5)
    b = split_examples(examples, seed=5)
    assert a == b
    assert sum(map(len, a.values())) == 10
