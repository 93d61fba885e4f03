"""`add_items`: new items encoded from their features into a new export version, in a fresh process."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfmarl.agents import ContentAgent
from tfmarl.data import Interactions, Vocabulary, build_item_features
from tfmarl.data.knowledge import KnowledgeGraph
from tfmarl.export import add_items, existing_versions, export_recommender, load_item_encoder
from tfmarl.training import SequentialRecommender

REPO = pathlib.Path(__file__).resolve().parents[1]
GENRES = ("Comedy", "Drama", "Horror")


def item_table(ids):
    return pd.DataFrame({"title": [f"{GENRES[int(i[1:]) % 3]} film {i}" for i in ids],
                         "categories": [(GENRES[int(i[1:]) % 3],) for i in ids],
                         "text": [""] * len(ids)}, index=pd.Index(ids, name="item_id"))


def graph(ids):
    return KnowledgeGraph.from_triples([(i, "director", f"d{int(i[1:]) % 4}") for i in ids])


@pytest.fixture(scope="module")
def catalog_export(tmp_path_factory):
    ids = [f"m{i}" for i in range(24)]
    log = pd.DataFrame({"user_id": ["u1"] * 4, "item_id": ids[:4], "timestamp": np.arange(4)})
    interactions = Interactions(log=log, items=item_table(ids), knowledge=graph(ids))
    vocab = Vocabulary(ids)
    features = build_item_features(interactions, vocab, text_vocabulary_size=60, title_length=6)
    tf.keras.utils.set_random_seed(3)
    content = ContentAgent(vocab.size, dim=16, name="content_agent", id_dropout=0.2, **features.content_agent_kwargs())
    content.set_item_features(features)
    model = SequentialRecommender(item_vocabulary=vocab, dim=16, max_length=6, num_layers=1, k=5, content_agent=content)
    model.build_all()
    base = tmp_path_factory.mktemp("catalog") / "films"
    export_recommender(model, base, item_features=features, metadata={"owner": "tests"}, warmup=False)
    return base, model, features


def test_export_carries_the_item_encoder(catalog_export):
    base, model, features = catalog_export
    loaded, loaded_features = load_item_encoder(base / "1")
    np.testing.assert_allclose(loaded.item_vectors().numpy(), model.item_vectors().numpy(), atol=1e-6)
    assert loaded.item_vocabulary.tokens == model.item_vocabulary.tokens
    assert loaded_features.entity_names == features.entity_names


@pytest.mark.slow
def test_add_items_in_a_fresh_process_serves_the_new_items(catalog_export, tmp_path):
    base, model, features = catalog_export
    new_ids = ["m100", "m101"]
    item_table(new_ids).assign(categories=lambda f: f["categories"].apply(list)).to_json(tmp_path / "new.json")
    graph(new_ids).save(tmp_path / "kg.csv")
    code = f"""
import pandas as pd, tfmarl
from tfmarl.data.knowledge import KnowledgeGraph
from tfmarl.export import add_items
items = pd.read_json({str(tmp_path / 'new.json')!r})
items.index = items.index.astype(str)
items["categories"] = items["categories"].apply(tuple)
print(add_items({str(base)!r}, items, knowledge=KnowledgeGraph.load({str(tmp_path / 'kg.csv')!r})))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    version = pathlib.Path(proc.stdout.strip().splitlines()[-1])
    assert version.name == "2" and existing_versions(base) == [1, 2]
    info = json.loads((version / "assets.extra" / "tfmarl.json").read_text())
    assert info["num_items"] == model.num_items + 2 and info["added_items"] == 2 and info["base_version"] == 1
    assert info["owner"] == "tests"

    # What the grown catalog should hold, computed here from the in-memory agent.
    rows = features.new_item_rows(item_table(new_ids), knowledge=graph(new_ids))
    grown = model.content_agent.with_new_items(rows)
    vectors = grown.catalog().numpy()
    assert grown.known_items.numpy()[-2:].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(vectors[:model.num_items], model.item_vectors().numpy(), atol=1e-6)
    # Same genre and director as an old item and no id part: the new item's vector is that item's
    # feature part (m100 ~ m4: genre 100 % 3 = 1 = 4 % 3, director 100 % 4 = 0 = 4 % 4).
    assert np.abs(vectors[-2]).max() > 0

    served = tf.saved_model.load(str(version)).signatures["serving_default"]
    out = served(history=tf.constant([["m1", "m2", ""]]))
    ids = out["item_ids"].numpy().astype(str)[0]
    assert len(ids) == 5
    # Scores of the new items against the same history, by hand.
    state = model.user_state(tf.constant([[3, 4]])).numpy()[0]  # m1, m2 -> indices 3, 4
    scores = vectors @ state
    scores[[0, 1, 3, 4]] = -np.inf
    expected = np.array(["", "[OOV]"] + model.item_vocabulary.tokens + new_ids)[np.argsort(-scores)[:5]]
    assert ids.tolist() == expected.tolist()
    np.testing.assert_allclose(out["scores"].numpy()[0], np.sort(scores)[::-1][:5], rtol=1e-4, atol=1e-5)


def test_add_items_rejects_known_ids_and_exports_without_an_encoder(catalog_export, tmp_path):
    base, model, _ = catalog_export
    with pytest.raises(ValueError, match="already in the catalog"):
        add_items(base, item_table(["m3"]), version=1)
    plain = tmp_path / "plain"
    export_recommender(model, plain, warmup=False)
    with pytest.raises(FileNotFoundError, match="item encoder"):
        add_items(plain, item_table(["m200"]))
    with pytest.raises(FileNotFoundError, match="no exported version"):
        add_items(tmp_path / "nothing", item_table(["m200"]))
