"""The serving parts that need no Ray: routing, parsers, the template generator, the index, config."""
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from models.datasets import load_catalog, load_policies
from serve.config import AppArgs
from serve.generator import TemplateGenerator
from serve.index import FilterError, VectorIndex, corpus, policy_passages, series_document
from serve.retriever import TitleMatcher
from serve.routing import asks_for_similar, index_for, order_number, volume_number

CATALOG = {s.id: s for s in load_catalog()}


def doc(series_id: str) -> dict:
    d = series_document(CATALOG[series_id])
    return {**d.to_json(), "score": 0.9}


@pytest.mark.parametrize("intent,index", [("recommendation", "catalog"), ("product_search", "catalog"),
                                          ("product_question", "catalog"), ("price_availability", "catalog"),
                                          ("shipping", "policy"), ("returns_refunds", "policy"),
                                          ("order_status", "policy"), ("chitchat", None)])
def test_routing(intent, index):
    assert index_for(intent) == index


@pytest.mark.parametrize("text,number", [("where is my order MA-552301", "MA-552301"), ("order 4417-2210 late", "4417-2210"),
                                         ("#88213945 not here", "88213945"), ("order no. 12345678", "12345678"),
                                         ("do you ship to canada", None), ("one piece vol 105", None)])
def test_order_numbers(text, number):
    assert order_number(text) == number


@pytest.mark.parametrize("text,volume", [("One Piece volume 105", 105), ("berserk vol. 3", 3), ("chainsaw man v.12", 12),
                                         ("monster #5", 5), ("do you have monster", None)])
def test_volume_numbers(text, volume):
    assert volume_number(text) == volume


def test_similar_detection():
    assert asks_for_similar("dark fantasy manga like Berserk?")
    assert asks_for_similar("if i loved monster what next")
    assert not asks_for_similar("do you have berserk")


def test_title_matcher_prefers_longest_titles():
    docs = [series_document(s) for s in load_catalog()]
    matcher = TitleMatcher(docs)
    ids = [docs[i].id for i in matcher.find("is hunter x hunter volume 38 out? also one piece")]
    assert ids[:2] == ["hunter-x-hunter", "one-piece"]
    assert [docs[i].id for i in matcher.find("something like berserk")] == ["berserk"]
    assert matcher.find("do you ship to canada") == []


def test_generator_volume_answer_is_grounded():
    gen = TemplateGenerator()
    answer = gen.compose("product_search", "one piece vol 105", [doc("one-piece")], {"volume": 105})
    standard = next(e for e in CATALOG["one-piece"].editions if e.edition == "standard")
    assert f"One Piece, Vol. 105 (Standard Edition): ${standard.price:.2f}" in answer
    missing = gen.compose("product_search", "monster vol 40", [doc("monster")], {"volume": 40})
    assert "has 18 volumes, so there is no Vol. 40" in missing


def test_generator_states_only_source_facts():
    gen = TemplateGenerator()
    sources = [doc("monster"), doc("pluto")]
    answer = gen.compose("price_availability", "monster price", sources, {})
    prices = {f"${e.price:.2f}" for e in CATALOG["monster"].editions}
    assert set(re.findall(r"\$\d+\.\d\d", answer)) <= prices and prices <= set(re.findall(r"\$\d+\.\d\d", answer))
    facts = gen.compose("product_question", "is monster finished", sources, {})
    assert "completed, with 18 volumes" in facts and "Naoki Urasawa" in facts


def test_generator_recommendation_and_policy_quote():
    gen = TemplateGenerator()
    rec = gen.compose("recommendation", "like berserk", [doc("claymore") if "claymore" in CATALOG else doc("monster")],
                      {"reference": "Berserk"})
    assert rec.startswith("If you liked Berserk")
    canada = next(p for p in load_policies() if p.id == "shipping-canada")
    passages = [{**d.to_json(), "score": 1.0} for d in policy_passages(canada)]
    answer = gen.compose("shipping", "how long does shipping to canada take", passages, {})
    quoted = answer.split("policy: ", 1)[1]
    assert "Canada" in quoted
    for sentence in re.split(r"(?<=[.!?])\s+", quoted):
        assert sentence in canada.body.replace("**", "")


def test_generator_conservative_and_chitchat():
    gen = TemplateGenerator()
    low = gen.compose("price_availability", "mmm", [doc("monster")], {"low_confidence": True})
    assert "not sure" in low and "$" not in low
    assert gen.compose("chitchat", "thanks!!", [], {}).startswith("You're welcome")
    assert gen.compose("chitchat", "hello", [], {}).startswith("Hi!")
    assert "".join(gen.stream("chitchat", "hello", [], {})) == gen.compose("chitchat", "hello", [], {})


def test_policy_passages_cover_the_whole_document():
    for policy in load_policies():
        passages = policy_passages(policy)
        joined = "\n".join(p.text.split(". ", 1)[1] for p in passages)
        assert re.sub(r"\s+", " ", joined) == re.sub(r"\s+", " ", policy.body.replace("**", ""))
        assert all(len(p.text.split()) < 250 for p in passages)


def _index(name="catalog"):
    docs = corpus(name)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(len(docs), 16)).astype(np.float32)
    return VectorIndex(name, docs, vecs / np.linalg.norm(vecs, axis=1, keepdims=True)), vecs


def test_index_filters_match_metadata():
    ix, vecs = _index()
    for filters in ({"demographic": ["seinen"], "genres": ["dark fantasy"]},
                    {"edition": "deluxe", "in_stock": True, "price_max": 40},
                    {"price_min": 100}, {"genres": ["romance"], "demographic": ["shojo", "josei"]}):
        hits = ix.search(vecs[0], 50, filters)
        allowed = ix.mask(filters)
        assert len(hits) == min(50, allowed.sum())
        for i, _ in hits:
            m = ix.docs[i].metadata
            if "demographic" in filters:
                assert m["demographic"] in filters["demographic"]
            if "genres" in filters:
                assert set(filters["genres"]) <= set(m["genres"])
            if "edition" in filters:
                assert any(e["edition"] == "deluxe" and e["in_stock"] and e["price"] <= 40 for e in m["editions"])
            if "price_min" in filters:
                assert any(e["price"] >= 100 for e in m["editions"])


def test_index_search_is_exact_for_unfiltered_queries_and_excludes():
    ix, vecs = _index()
    q = vecs[7] / np.linalg.norm(vecs[7])
    hits = ix.search(q, 5)
    assert hits[0][0] == 7
    brute = np.argsort(-(ix.vectors @ q))[:5]
    assert [i for i, _ in hits] == brute.tolist()
    assert ix.docs[7].id not in [ix.docs[i].id for i, _ in ix.search(q, 5, exclude=[ix.docs[7].id])]


def test_index_roundtrip_and_filter_errors(tmp_path):
    ix, vecs = _index("policy")
    ix.save(tmp_path / "policy", {"embedder_version": "test"})
    loaded = VectorIndex.load(tmp_path / "policy")
    assert [d.id for d in loaded.docs] == [d.id for d in ix.docs]
    assert loaded.search(vecs[3], 3) == ix.search(vecs[3], 3)
    assert {ix.docs[i].metadata["category"] for i, _ in ix.search(vecs[0], 10, {"category": "shipping"})} == {"shipping"}
    with pytest.raises(FilterError):
        ix.search(vecs[0], 3, {"genres": ["romance"]})


def test_serve_config_file_is_valid():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(Path("serve/config/local.yaml").read_text())
    config = ServeDeploySchema.model_validate(raw)
    app = config.applications[0]
    assert app.import_path == "serve.app:build_app"
    args = AppArgs.model_validate(app.args)
    assert args.reranker.runtime == "openvino" and args.reranker.precision == "bf16"
    assert {d["name"] for d in raw["applications"][0]["deployments"]} == {
        "Gateway", "IntentClassifier", "Embedder", "Retriever", "Reranker", "Generator"}
    assert sum(d["ray_actor_options"]["num_cpus"] for d in raw["applications"][0]["deployments"]) <= 2
    with pytest.raises(ValueError):
        AppArgs.model_validate({"intent": {"ref": "intent", "runtime": "tensorrt"}})
    # a precision the runtime cannot run, or openvino on a GPU, is refused at deploy time, not at the first request
    for bad, reason in (({"runtime": "openvino", "precision": "int8"}, "openvino runs precision fp32 or bf16"),
                        ({"runtime": "onnx", "precision": "bf16"}, "onnx runs precision fp32 or int8"),
                        ({"runtime": "openvino", "precision": "bf16", "device": "cuda"}, "openvino runs on device cpu")):
        with pytest.raises(ValueError, match=reason):
            AppArgs.model_validate({"intent": {"ref": "intent", **bad}})


def test_item_similarity_prefers_shared_genres_and_demographic():
    from serve.routing import similarity

    berserk = series_document(CATALOG["berserk"]).metadata
    scores = {sid: similarity(berserk, series_document(CATALOG[sid]).metadata)
              for sid in ("hellsing", "fruits-basket", "berserk") if sid in CATALOG}
    assert scores["berserk"] > scores["hellsing"] > scores["fruits-basket"]


def test_a_model_version_is_named_without_downloading_or_hashing(tmp_path, monkeypatch):
    from serve.loading import model_version

    assert model_version("s3://models-bucket/mangaassist/intent/v-abc123") == "v-abc123"
    folder = tmp_path / "intent" / "v-def456"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text('{"name": "intent", "version": "v-def456"}')
    (tmp_path / "intent" / "current").write_text("v-def456")
    assert model_version(str(folder)) == "v-def456"
    from models.registry import Registry

    monkeypatch.setattr("serve.loading.Registry", lambda: Registry(tmp_path))
    assert model_version("intent") == model_version("intent:v-def456") == "v-def456"


def test_reranker_batch_is_what_tokenizing_every_pair_at_once_gives():
    """Each request is tokenized once (its token count and its features); a batch right-pads them to the
    longest pair: the same arrays as the tokenizer over every pair of the batch."""
    from models.modeling import load_tokenizer
    from serve.reranker import RerankItem, stack_features, total_tokens

    tokenizer = load_tokenizer()

    def features(queries, docs):
        enc = tokenizer(queries, docs, padding=True, truncation=True, max_length=64, return_tensors="np")
        return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}

    requests = [("berserk", ["Berserk by Kentaro Miura, dark fantasy " * 20, "Yotsuba&!"]),
                ("do you ship to canada", ["We ship to Canada in 5-7 business days."])]
    items = []
    for query, docs in requests:
        f = features([query] * len(docs), docs)
        items.append(RerankItem(f, int(f["attention_mask"].sum())))
    batch = stack_features(items, tokenizer.pad_token_id)
    joint = features([q for q, docs in requests for _ in docs], [d for _, docs in requests for d in docs])
    assert batch.keys() == joint.keys()
    for name in joint:
        np.testing.assert_array_equal(batch[name], joint[name])
    assert total_tokens(items) == int(joint["attention_mask"].sum())


def test_pair_encoder_gives_the_tokenizers_arrays_with_documents_cached():
    """The reranker tokenizes each document once (PairEncoder's cache) and each pair by the tokenizer's own
    truncation and template: the arrays must be exactly those of tokenizing the pairs, for every served
    document and for queries short, long and longer than the pair budget (truncation then cuts both)."""
    from models.modeling import load_tokenizer
    from models.runtime import ONNX_INPUTS, PairEncoder

    tokenizer = load_tokenizer()
    encoder = PairEncoder(tokenizer, cache_size=64)  # smaller than the documents: evictions too
    documents = [d.text for d in corpus("catalog")[:150]] + [d.text for d in corpus("policy")] + ["", "🙂 ok", "a"]
    queries = ["berserk", "do you ship to Canada and how long does it take?", "envío a México 📦 " * 6,
               "dark fantasy like berserk " * 30, ""]
    for start in range(0, len(documents), 50):
        docs = documents[start:start + 50]
        for query in queries:
            for max_length in (64, 128):  # the card's length, and one a serve config may set on the same model
                enc = tokenizer([query] * len(docs), docs, padding=True, truncation=True, max_length=max_length,
                                return_tensors="np")
                ours = encoder(query, docs, max_length)
                for name in ONNX_INPUTS:
                    np.testing.assert_array_equal(ours[name], enc[name].astype(np.int64),
                                                  err_msg=f"{name} at {max_length}: {query!r}")
    info = encoder.document.cache_info()
    assert info.hits == 9 * len(documents) and info.misses == len(documents) and info.currsize == 64


def test_policy_passages_can_have_fewer_candidates_than_the_catalog():
    args = AppArgs(retrieve_k=20, policy_retrieve_k=12)
    assert (args.candidates("catalog"), args.candidates("policy")) == (20, 12)
    assert AppArgs(retrieve_k=16).candidates("policy") == 16  # default: retrieve_k for both
    local = yaml.safe_load((Path(__file__).resolve().parents[2] / "serve" / "config" / "local.yaml").read_text())
    served = AppArgs.model_validate(local["applications"][0]["args"])
    assert served.candidates("policy") < served.candidates("catalog")
