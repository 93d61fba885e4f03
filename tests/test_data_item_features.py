"""Tests for item feature tables (categories, title tokens) and keras-hub text embeddings.

All data is generated here; the only backbone is the tiny random BERT preset written by
`build_tiny_text_preset`, so nothing is downloaded.
"""

import tfmarl  # noqa: F401  (selects tf_keras before TensorFlow is imported)

import os
import subprocess
import sys

import keras_hub
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfmarl.agents import ContentAgent
from tfmarl.data.interactions import Interactions
from tfmarl.data.item_features import ItemFeatures, build_item_features
from tfmarl.data.tokenize import learn_word_tokenizer, tokenize_texts, tokenizer_vocabulary
from tfmarl.data.text import build_tiny_text_preset, embed_item_texts, embed_texts
from tfmarl.data.vocab import Vocabulary

GENRES = ["Action", "Comedy", "Drama", "Horror", "Western"]
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
TITLE_LENGTH = 6
LONG_TITLE = "one two three four five six seven eight nine ten"


def make_interactions(with_items=True):
    """30 described items plus special cases; the log also names one undescribed item."""
    rows = {}
    for k in range(30):
        cats = (GENRES[k % 5], GENRES[(k + 2) % 5]) if k % 3 else (GENRES[k % 5],)
        rows[f"m{k}"] = (f"{WORDS[k % 8].title()} {WORDS[(k * 3) % 8]} {k}", cats, f"about {WORDS[k % 8]}")
    rows["twin_a"] = ("Same Title", ("Drama", "Comedy"), "same text")
    rows["twin_b"] = ("Same Title", ("Drama", "Comedy"), "same text")
    rows["many_cats"] = ("Many", ("Western", "Horror", "Drama", "Comedy", "Action", "Horror"), "")
    rows["long"] = (LONG_TITLE, (), "")
    rows["text_only"] = ("", ("Action",), "hotel golf")
    rows["blank"] = ("", (), "")
    rows["unlogged"] = ("Not In Vocab", ("Action",), "")
    items = pd.DataFrame([(i, *v) for i, v in rows.items()],
                         columns=["item_id", "title", "categories", "text"]).set_index("item_id")
    logged = [i for i in rows if i != "unlogged"] + ["ghost"]
    log = pd.DataFrame({"user_id": [f"u{n % 7}" for n in range(len(logged))], "item_id": logged,
                        "timestamp": np.arange(len(logged), dtype=np.int64)})
    return Interactions(log=log, items=items if with_items else None, name="generated")


@pytest.fixture(scope="module")
def data():
    interactions = make_interactions()
    vocab = Vocabulary(sorted(interactions.log["item_id"].unique()))
    features = build_item_features(interactions, vocab, title_length=TITLE_LENGTH, max_categories=3,
                                   text_vocabulary_size=200)
    return interactions, vocab, features


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    return build_tiny_text_preset(tmp_path_factory.mktemp("tiny_bert"), preset_texts(), hidden_dim=16)


def preset_texts():
    items = make_interactions().items
    return [f"{title} {text}" for title, text in zip(items["title"], items["text"])]


def row(vocab, item_id):
    return int(vocab.lookup([item_id])[0])


def words_of(features, tokens):
    """Word pieces of a token row, joined back ("##" continuations glued on)."""
    pieces = [features.text_vocabulary[t] for t in tokens if t]
    return "".join(p[2:] if p.startswith("##") else " " + p for p in pieces).strip()


# --- categories ------------------------------------------------------------------------------
def test_category_table_is_aligned_with_the_vocabulary(data):
    interactions, vocab, features = data
    assert features.category_names == GENRES
    assert features.categories.dtype == np.int32 and features.categories.shape == (vocab.size, 3)
    assert not features.categories[[0, 1, row(vocab, "ghost"), row(vocab, "blank"), row(vocab, "long")]].any()
    for item_id in ["m0", "m4", "m7", "twin_a", "text_only"]:
        expected = [GENRES.index(c) + 1 for c in interactions.items.loc[item_id, "categories"]]
        got = features.categories[row(vocab, item_id)]
        assert list(got[:len(expected)]) == expected and not got[len(expected):].any()
    # Distinct categories, in listed order, truncated to max_categories.
    names = [features.category_names[i - 1] for i in features.categories[row(vocab, "many_cats")]]
    assert names == ["Western", "Horror", "Drama"]


# --- titles ----------------------------------------------------------------------------------
def test_titles_are_tokenized_into_an_aligned_table(data):
    interactions, vocab, features = data
    tokens = features.title_tokens
    assert tokens.dtype == np.int32 and tokens.shape == (vocab.size, TITLE_LENGTH)
    assert features.text_vocabulary[:2] == ["[PAD]", "[UNK]"] and len(features.text_vocabulary) <= 200
    assert tokens.max() < len(features.text_vocabulary)
    assert not tokens[[0, 1, row(vocab, "ghost"), row(vocab, "blank")]].any()
    described = [i for i in vocab.tokens if i not in ("ghost", "blank")]
    assert all(tokens[row(vocab, i), 0] > 0 for i in described)
    assert (tokens[row(vocab, "twin_a")] == tokens[row(vocab, "twin_b")]).all()
    assert (tokens[row(vocab, "m0")] != tokens[row(vocab, "m1")]).any()
    # Word pieces spell the lowercased title (or the text column when the title is empty), cut
    # at title_length pieces. (On a catalog this small, the WordPiece learner keeps mostly
    # single characters: it drops pieces seen fewer than ~10 times.)
    assert words_of(features, tokens[row(vocab, "many_cats")]) == "many"
    for item_id, text in [("m1", "bravo delta 1"), ("text_only", "hotel golf"), ("long", LONG_TITLE)]:
        assert tokens[row(vocab, item_id)].all()  # truncated: every slot used
        assert text.startswith(words_of(features, tokens[row(vocab, item_id)]))
    # Padding only after the tokens.
    many = tokens[row(vocab, "many_cats")]
    assert (many[:np.count_nonzero(many)] > 0).all() and not many[np.count_nonzero(many):].any()


def test_external_tokenizer_is_used_and_padded_to_title_length(data):
    interactions, vocab, _ = data
    words = ["[PAD]", "[UNK]", "same", "title", "many", "hotel", "golf"]
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=words, lowercase=True)  # ragged output
    features = build_item_features(interactions, vocab, title_length=4, tokenizer=tokenizer)
    assert features.text_vocabulary == words
    assert list(features.title_tokens[row(vocab, "twin_a")]) == [2, 3, 0, 0]
    assert list(features.title_tokens[row(vocab, "text_only")]) == [5, 6, 0, 0]
    assert list(features.title_tokens[row(vocab, "m0")]) == [1, 1, 1, 0]  # unknown words

    dense = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=words, lowercase=True, sequence_length=2)
    assert tokenize_texts(["same title same", ""], dense, 3).tolist() == [[2, 3, 0], [0, 0, 0]]


def test_word_vocabulary_keeps_whole_words_shared_by_titles(data):
    interactions, vocab, _ = data
    features = build_item_features(interactions, vocab, title_length=TITLE_LENGTH, title_vocabulary="words")
    vocabulary = features.text_vocabulary
    assert vocabulary[:2] == ["[PAD]", "[UNK]"]
    # Every WORD is in 3+ titles; numbers (m-k's "k"), "Many" (one title) and LONG_TITLE's words
    # (one title) are not kept; "same" / "title" are in the twins' two titles.
    assert set(vocabulary[2:]) == set(WORDS) | {"same", "title"}
    tokens = features.title_tokens
    assert 1 not in tokens  # unknown words are left out, not a shared [UNK] feature
    assert [vocabulary[t] for t in tokens[row(vocab, "m1")] if t] == ["bravo", "delta"]  # "1" dropped
    assert [vocabulary[t] for t in tokens[row(vocab, "text_only")] if t] == ["hotel", "golf"]
    assert not tokens[row(vocab, "long")].any() and not tokens[row(vocab, "many_cats")].any()
    kwargs = features.content_agent_kwargs()
    assert kwargs["text_vocabulary_size"] == len(vocabulary) and kwargs["title_length"] == TITLE_LENGTH
    # Skipped words free their slots before the cut to the title length.
    tokenizer = learn_word_tokenizer(["x a 1 2 3 b", "a b", "c"], min_count=2)
    assert tokenize_texts(["x a 1 2 3 b"], tokenizer, 2, skip_ids=[tokenizer.token_to_id("[UNK]")]).tolist() == \
        [[tokenizer_vocabulary(tokenizer).index("a"), tokenizer_vocabulary(tokenizer).index("b")]]
    with pytest.raises(ValueError, match="title_vocabulary"):
        build_item_features(interactions, vocab, title_vocabulary="characters")
    with pytest.raises(ValueError, match="lower min_count"):
        learn_word_tokenizer(["one", "two"], min_count=2)


def test_tokenizer_without_padding_at_index_zero_gets_shifted():
    words = ["toy", "story", "[UNK]"]
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=words, oov_token="[UNK]")
    assert tokenizer_vocabulary(tokenizer) == ["[PAD]"] + words
    assert tokenize_texts(["toy story toy", "story x"], tokenizer, 4).tolist() == [[1, 2, 1, 0], [2, 3, 0, 0]]


def test_without_an_item_table_there_are_no_tables():
    interactions = make_interactions(with_items=False)
    features = build_item_features(interactions, Vocabulary(interactions.item_ids()))
    assert features.categories is None and features.title_tokens is None and features.num_items is None
    assert features.content_agent_kwargs() == {"num_categories": 0, "text_vocabulary_size": 0,
                                               "text_embedding_dim": 0}


def test_switches_turn_features_off(data):
    interactions, vocab, _ = data
    features = build_item_features(interactions, vocab, categories=False, titles=False)
    assert features.categories is None and features.title_tokens is None


# --- ItemFeatures ----------------------------------------------------------------------------
def test_item_features_save_load_roundtrip(data, tmp_path):
    _, vocab, features = data
    embeddings = np.random.default_rng(0).normal(size=(vocab.size, 5)).astype(np.float32)
    full = features.with_text_embeddings(embeddings)
    assert features.text_embeddings is None  # a copy
    full.save(tmp_path / "features")
    loaded = ItemFeatures.load(tmp_path / "features")
    for name in ("categories", "title_tokens", "text_embeddings"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(full, name))
        assert getattr(loaded, name).dtype == getattr(full, name).dtype
    assert loaded.category_names == full.category_names
    assert loaded.text_vocabulary == full.text_vocabulary
    assert loaded.content_agent_kwargs() == full.content_agent_kwargs() == {
        "num_categories": 6, "max_categories": 3, "text_vocabulary_size": len(features.text_vocabulary),
        "title_length": TITLE_LENGTH, "text_embedding_dim": 5}
    assert sorted(os.listdir(tmp_path / "features")) == ["item_features.json", "item_features.npz"]


def test_item_features_validate_tables(data):
    _, vocab, features = data
    with pytest.raises(ValueError, match="number of items"):
        features.with_text_embeddings(np.zeros((vocab.size + 1, 3)))
    with pytest.raises(ValueError, match="outside"):
        ItemFeatures(categories=np.full((4, 2), 9), category_names=["a"])
    with pytest.raises(ValueError, match=r"\[PAD\]"):
        ItemFeatures(title_tokens=np.zeros((4, 2)), text_vocabulary=["a", "b"])


def test_item_features_module_does_not_import_tensorflow():
    code = ("import sys, tfmarl.data.item_features; "
            "assert 'tensorflow' not in sys.modules and 'keras_hub' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- into the Content agent ------------------------------------------------------------------
def test_content_agent_reads_the_features(data, preset):
    interactions, vocab, features = data
    features = features.with_text_embeddings(embed_item_texts(interactions, vocab, preset))
    agent = ContentAgent(num_items=vocab.size, dim=8, **features.content_agent_kwargs())
    agent.set_item_features(features)
    agent.id_embeddings.assign(tf.zeros_like(agent.id_embeddings))  # only features remain
    catalog = agent.catalog().numpy()
    unit = catalog / np.maximum(np.linalg.norm(catalog, axis=1, keepdims=True), 1e-9)
    twin_a, twin_b, other = (row(vocab, i) for i in ("twin_a", "twin_b", "m0"))
    np.testing.assert_allclose(catalog[twin_a], catalog[twin_b], atol=1e-6)
    assert unit[twin_a] @ unit[twin_b] > unit[twin_a] @ unit[other]
    assert not catalog[[0, 1, row(vocab, "ghost")]].any()  # no features, no id embedding


# --- text embeddings -------------------------------------------------------------------------
@pytest.mark.slow
def test_embed_texts_shape_and_determinism(preset):
    texts = ["Toy Story", "Heat", "alpha bravo charlie", "Toy Story", ""]
    vectors = embed_texts(texts, preset, sequence_length=8, batch_size=2)
    assert vectors.shape == (5, 16) and vectors.dtype == np.float32 and np.isfinite(vectors).all()
    np.testing.assert_allclose(vectors[0], vectors[3], atol=1e-6)  # same text, other batch
    distinct = vectors[[0, 1, 2, 4]]
    gaps = np.abs(distinct[:, None] - distinct[None]).max(axis=-1)
    assert (gaps + np.eye(4) > 1e-4).all()
    again = embed_texts(texts, preset, sequence_length=8, batch_size=3)
    np.testing.assert_allclose(again, vectors, atol=1e-5)
    cls = embed_texts(texts[:2], preset, sequence_length=8, pooling="cls")
    assert cls.shape == (2, 16) and np.abs(cls - vectors[:2]).max() > 1e-4
    assert embed_texts([], preset).shape == (0, 16)


def test_tiny_preset_depends_on_seed_only(preset, tmp_path):
    same = build_tiny_text_preset(tmp_path / "again", preset_texts(), hidden_dim=16)
    probe = ["alpha bravo", "same title"]
    np.testing.assert_allclose(embed_texts(probe, same), embed_texts(probe, preset), atol=1e-6)


def test_embed_item_texts_is_aligned_with_the_vocabulary(data, preset):
    interactions, vocab, _ = data
    table = embed_item_texts(interactions, vocab, preset, sequence_length=12)
    assert table.shape == (vocab.size, 16) and table.dtype == np.float32
    assert not table[[0, 1, row(vocab, "ghost"), row(vocab, "blank")]].any()
    np.testing.assert_allclose(table[row(vocab, "twin_a")], table[row(vocab, "twin_b")], atol=1e-6)
    probe = embed_texts(["Bravo delta 1 about bravo", "hotel golf"], preset, sequence_length=12)
    np.testing.assert_allclose(table[row(vocab, "m1")], probe[0], atol=1e-5)
    np.testing.assert_allclose(table[row(vocab, "text_only")], probe[1], atol=1e-5)


def test_missing_or_invalid_preset_directory(tmp_path, preset):
    missing = tmp_path / "no_such_preset"
    with pytest.raises(FileNotFoundError, match="no_such_preset"):
        embed_texts(["a"], missing)
    with pytest.raises(FileNotFoundError, match="no_such_preset"):
        embed_texts(["a"], str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        embed_texts(["a"], tmp_path / "empty")
    with pytest.raises(ValueError, match="max_sequence_length"):
        embed_texts(["a"], preset, sequence_length=1000)
    with pytest.raises(ValueError, match="no item table"):
        embed_item_texts(make_interactions(with_items=False), Vocabulary(["m0"]), preset)


def test_knowledge_graph_and_numeric_tables_and_new_item_rows():
    import pandas as pd

    from tfmarl.data.knowledge import KnowledgeGraph

    ids = ["a", "b", "c"]
    log = pd.DataFrame({"user_id": ["u"] * 3, "item_id": ids, "timestamp": [1, 2, 3]})
    items = pd.DataFrame({"title": ["", "", ""], "categories": [("x",), ("y",), ("x", "y")], "text": [""] * 3},
                         index=pd.Index(ids, name="item_id"))
    graph = KnowledgeGraph.from_triples([("a", "director", "d1"), ("b", "director", "d2"), ("c", "studio", "s1"),
                                         ("c", "director", "d1")])
    interactions = Interactions(log=log, items=items, knowledge=graph)
    vocab = Vocabulary(ids)
    numeric = pd.DataFrame({"year": [1990.0, 2000.0, np.nan]}, index=ids)
    features = build_item_features(interactions, vocab, titles=False, numeric=numeric)
    assert features.relation_names == ["director", "studio"] and features.entity_names == ["d1", "d2", "s1"]
    assert features.kg_entities[vocab.lookup(["c"])[0]].tolist() == [1, 3]  # d1, s1
    assert features.kg_relations[vocab.lookup(["c"])[0]].tolist() == [1, 2]
    np.testing.assert_allclose(features.numeric[2:, 0], [-1.0, 1.0, 0.0])  # standardised, missing -> mean
    assert features.numeric_mean == [1995.0] and features.numeric_std == [5.0]
    kwargs = features.content_agent_kwargs()
    assert kwargs["num_entities"] == 4 and kwargs["num_relations"] == 3 and kwargs["numeric_dim"] == 1
    assert build_item_features(interactions, vocab, titles=False, knowledge=False).kg_entities is None

    # New items: known names map to the same indices, unknown ones get no slot.
    new = pd.DataFrame({"title": ["", ""], "categories": [("y", "z"), ()], "text": ["", ""]},
                       index=pd.Index(["n1", "n2"], name="item_id"))
    rows = features.new_item_rows(new, knowledge=KnowledgeGraph.from_triples(
        [("n1", "director", "d2"), ("n1", "director", "d9"), ("n2", "genre", "g")]),
        numeric=pd.DataFrame({"year": [2005.0, None]}, index=["n1", "n2"]))
    assert rows["categories"].tolist() == [[2, 0, 0, 0][:features.categories.shape[1]], [0] * features.categories.shape[1]]
    assert rows["kg_entities"][0].tolist()[:1] == [2] and rows["kg_entities"][0].tolist()[1:] == [0]
    assert rows["kg_entities"][1].tolist() == [0, 0]
    np.testing.assert_allclose(rows["numeric"][:, 0], [2.0, 0.0])
    with pytest.raises(ValueError, match="constant"):
        build_item_features(interactions, vocab, titles=False, numeric=pd.DataFrame({"k": [1.0, 1.0, 1.0]}, index=ids))
    with pytest.raises(ValueError, match="non-number"):
        build_item_features(interactions, vocab, titles=False, numeric=pd.DataFrame({"k": ["1", "x", "2"]}, index=ids))
    # Save / load keeps the knowledge and numeric tables and their names.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        features.save(tmp)
        loaded = ItemFeatures.load(tmp)
    assert loaded.entity_names == features.entity_names and loaded.numeric_std == [5.0]
    np.testing.assert_array_equal(loaded.kg_entities, features.kg_entities)
