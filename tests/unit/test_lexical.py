"""The character n-gram intent model and its blend with the transformer (models/lexical.py)."""
import numpy as np
import pytest

from models import INTENT_LABELS
from models.datasets import load_intents
from models.lexical import LexicalModel, blend, fit_weight, log_softmax

LABEL = {label: i for i, label in enumerate(INTENT_LABELS)}


@pytest.fixture(scope="module")
def lexical():
    rows = load_intents("train")
    return LexicalModel.fit([r.text for r in rows], [LABEL[r.label] for r in rows])


def test_reads_the_held_out_split_with_typos_and_other_languages(lexical):
    rows = load_intents("validation")
    pred = lexical.log_proba([r.text for r in rows]).argmax(1)
    assert (pred == np.array([LABEL[r.label] for r in rows])).mean() > 0.85
    probe = ["¿hacen envíos a méxico y cuánto tarda?", "wher is my ordr 4417-2210", "hola!!"]
    assert [INTENT_LABELS[i] for i in lexical.log_proba(probe).argmax(1)] == ["shipping", "order_status", "chitchat"]


def test_save_and_load_give_the_same_scores_without_pickle(lexical, tmp_path):
    lexical.save(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.suffix not in (".json", ".npy")]
    texts = [r.text for r in load_intents("test")[:50]]
    again = LexicalModel.load(tmp_path)
    np.testing.assert_array_equal(again.log_proba(texts), lexical.log_proba(texts))
    assert np.allclose(np.exp(again.log_proba(texts)).sum(1), 1.0, atol=1e-5)


def test_blend_weight_one_is_the_transformer_alone_and_the_weight_follows_validation():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, 400)
    noisy = rng.normal(size=(400, 8)) * 3  # a transformer that knows nothing
    perfect = log_softmax(np.eye(8)[y] * 5)  # a lexical model that knows everything
    assert np.allclose(blend(noisy, perfect, 1.0), log_softmax(noisy))
    assert fit_weight(noisy, perfect, y) == 0.3  # the most lexical weight the grid allows
    assert fit_weight(log_softmax(np.eye(8)[y] * 5), log_softmax(noisy), y) == 1.0
    # each knows half of the classes: the log-loss picks an inner weight, near the middle
    knows_low = np.where((y < 4)[:, None], np.eye(8)[y] * 5, noisy)
    knows_high = np.where((y >= 4)[:, None], np.eye(8)[y] * 5, noisy)
    assert 0.4 <= fit_weight(knows_low, log_softmax(knows_high), y) <= 0.6
