"""Tests for item knowledge graphs (tfmarl.data.knowledge), on small graphs and files written here."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tfmarl.data.errors import DataError, DataWarning
from tfmarl.data.interactions import Interactions
from tfmarl.data.knowledge import (RELATION_NONE, KnowledgeGraph, load_knowledge_graph,
                                   movielens_knowledge_graph, read_movielens_tags)
from tfmarl.data.movielens import load_movielens
from tfmarl.data.synthetic import generate_synthetic
from tfmarl.data.vocab import Vocabulary

from test_data_loaders import ml1m, ml100k, ml_latest, raises_data_error, write_lines

TRIPLES = [
    ("a", "genre", "Comedy"), ("a", "genre", "Drama"), ("a", "decade", "1990s"),
    ("b", "genre", "Comedy"), ("b", "decade", "1980s"),
    ("c", "genre", "Horror"),
    ("zzz", "genre", "Comedy"),  # not in the vocabulary below
]


def graph(triples=TRIPLES, name="kg"):
    return KnowledgeGraph.from_triples(triples, name=name)


# --- construction and validation -----------------------------------------------------------


def test_from_triples_and_summary():
    kg = graph(TRIPLES + [("a", "genre", "Comedy")])  # an exact duplicate is dropped
    assert len(kg) == len(TRIPLES)
    assert list(kg.triples.columns) == ["item_id", "relation", "entity"]
    assert isinstance(kg.triples.index, pd.RangeIndex)
    assert kg.triples.iloc[0].tolist() == ["a", "genre", "Comedy"]
    assert kg.relation_names() == ["decade", "genre"]
    assert kg.entity_names() == ["1980s", "1990s", "Comedy", "Drama", "Horror"]
    assert kg.item_ids() == ["a", "b", "c", "zzz"]
    assert kg.degrees().to_dict() == {"a": 3, "b": 2, "c": 1, "zzz": 1}
    assert "triples=7" in repr(kg)
    same = KnowledgeGraph.from_triples(kg.triples, name="again")
    pd.testing.assert_frame_equal(same.triples, kg.triples)
    assert KnowledgeGraph.from_triples([]).triples.shape == (0, 3)


def test_natural_sort_and_string_conversion():
    kg = KnowledgeGraph(pd.DataFrame({"item_id": [10, 2], "relation": ["r", "r"], "entity": ["10", "9"],
                                      "extra": [0, 1]}))
    assert kg.item_ids() == ["2", "10"] and kg.entity_names() == ["9", "10"]
    assert list(kg.triples.columns) == ["item_id", "relation", "entity"]
    assert all(isinstance(x, str) for x in kg.triples.to_numpy().ravel())


@pytest.mark.parametrize("triples, match", [
    ([("a", "genre", "")], "empty entity in row 0"),
    ([("a", "g", "x"), ("a", " ", "x")], "empty relation in row 1"),
    ([("", "g", "x")], "empty item_id in row 0"),
    ([("a", "g", None)], "missing entity in row 0"),
    ([("a", "g", np.nan)], "missing entity in row 0"),
    ([("a", "g")], "must be (item_id, relation, entity)"),
    ("abc", "got a string"),
])
def test_from_triples_validation(triples, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        KnowledgeGraph.from_triples(triples)


def test_dataframe_validation():
    with pytest.raises(ValueError, match="lack column 'entity'"):
        KnowledgeGraph(pd.DataFrame({"item_id": ["a"], "relation": ["r"]}))
    with pytest.raises(ValueError, match="must be a pandas DataFrame"):
        KnowledgeGraph([("a", "r", "e")])


# --- indexed tables --------------------------------------------------------------------------


def test_item_neighbours_align_with_vocabulary():
    kg = graph()
    vocab = Vocabulary(["b", "a", "d", "c"])  # indices: b=2, a=3, d=4 (no triples), c=5
    relations, entities = kg.item_neighbours(vocab)
    assert relations.dtype == np.int32 and entities.dtype == np.int32
    assert relations.shape == entities.shape == (vocab.size, 3)  # M = largest degree in the vocabulary
    rel, ent = ["<none>"] + kg.relation_names(), ["<none>"] + kg.entity_names()

    def row(token):
        index = int(vocab.lookup([token])[0])
        return {(rel[r], ent[e]) for r, e in zip(relations[index], entities[index]) if r}

    assert row("a") == {("genre", "Comedy"), ("genre", "Drama"), ("decade", "1990s")}
    assert row("b") == {("genre", "Comedy"), ("decade", "1980s")}
    assert row("c") == {("genre", "Horror")}
    # Reserved rows (padding, OOV) and an item without triples are all zeros, in both tables.
    for index in (0, 1, int(vocab.lookup(["d"])[0])):
        assert not relations[index].any() and not entities[index].any()
    # Zeros only ever pad on the right, and entity/relation zeros coincide.
    assert ((relations == RELATION_NONE) == (entities == 0)).all()
    c = int(vocab.lookup(["c"])[0])
    assert relations[c].tolist()[1:] == [0, 0]


def test_item_neighbours_width_and_empty_cases():
    vocab = Vocabulary(["c"])
    relations, entities = graph().item_neighbours(vocab, max_neighbours=16)
    assert relations.shape == (3, 1)  # the largest degree among vocabulary items is 1
    relations, _ = graph().item_neighbours(Vocabulary(["nothing"]))
    assert relations.shape == (3, 1) and not relations.any()  # at least one column
    with pytest.raises(ValueError, match="max_neighbours"):
        graph().item_neighbours(vocab, max_neighbours=0)


def test_item_neighbours_sampling_is_capped_and_deterministic():
    triples = [(str(i), f"r{j % 3}", f"e{j}") for i in range(1, 6) for j in range(i * 10)]
    kg = graph(triples)
    vocab = Vocabulary([str(i) for i in range(1, 6)])
    relations, entities = kg.item_neighbours(vocab, max_neighbours=8, seed=1)
    assert relations.shape == (vocab.size, 8)
    assert (relations[2:] > 0).all()  # every item has >= 10 triples: full rows
    again = kg.item_neighbours(vocab, max_neighbours=8, seed=1)
    np.testing.assert_array_equal(again[1], entities)
    # Row order of the triples does not change the sample.
    reordered = KnowledgeGraph(kg.triples.iloc[::-1].reset_index(drop=True))
    np.testing.assert_array_equal(reordered.item_neighbours(vocab, max_neighbours=8, seed=1)[1], entities)
    other = kg.item_neighbours(vocab, max_neighbours=8, seed=2)[1]
    assert not np.array_equal(other, entities)
    # Every kept pair is a real triple of its item, and distinct within the row.
    rel, ent = ["-"] + kg.relation_names(), ["-"] + kg.entity_names()
    real = set(triples)
    for token in vocab.tokens:
        index = int(vocab.lookup([token])[0])
        pairs = [(token, rel[r], ent[e]) for r, e in zip(relations[index], entities[index])]
        assert set(pairs) <= real and len(set(pairs)) == 8


# --- null graph and restriction ---------------------------------------------------------------


def per_item_relation(kg):
    return kg.triples.groupby(["item_id", "relation"]).size().to_dict()


def per_entity_relation(kg):
    return kg.triples.groupby(["entity", "relation"]).size().to_dict()


def test_shuffled_preserves_degrees_and_changes_pairings():
    rng = np.random.default_rng(0)
    triples = {(str(i), "genre", f"g{g}") for i in range(300) for g in rng.choice(12, size=rng.integers(1, 4),
                                                                                  replace=False)}
    triples |= {(str(i), "tag", f"t{rng.integers(40)}") for i in range(300)}
    kg = graph(sorted(triples))
    null = kg.shuffled(seed=3)
    assert len(null) == len(kg)  # duplicates were re-drawn, none dropped
    assert per_item_relation(null) == per_item_relation(kg)
    assert per_entity_relation(null) == per_entity_relation(kg)
    original = set(map(tuple, kg.triples.to_numpy()))
    shuffled = set(map(tuple, null.triples.to_numpy()))
    assert len(original & shuffled) < 0.5 * len(original)
    pd.testing.assert_frame_equal(kg.shuffled(seed=3).triples, null.triples)
    assert not kg.shuffled(seed=4).triples.equals(null.triples)


def test_restricted_to():
    kg = graph()
    small = kg.restricted_to(["a", "c", "unknown"])
    assert small.item_ids() == ["a", "c"] and len(small) == 4
    assert isinstance(small.triples.index, pd.RangeIndex)
    assert len(kg.restricted_to([])) == 0


# --- files -----------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    kg = graph(TRIPLES + [("007", "title word", 'has, comma "and quotes"'), ("8", "note", "line\nbreak")])
    path = tmp_path / "sub" / "kg.csv"
    kg.save(path)
    assert path.read_text(encoding="utf-8").splitlines()[0] == "item_id,relation,entity"
    assert [p.name for p in path.parent.iterdir()] == ["kg.csv"]  # no temporary file left
    back = KnowledgeGraph.load(path)
    pd.testing.assert_frame_equal(back.triples, kg.triples)
    assert back.name == "kg"


def test_load_csv_tsv_parquet(tmp_path):
    csv = write_lines(tmp_path / "kg.csv", ["movie,rel,ent,weight", "1,genre,Comedy,1", "1,genre,Comedy,2",
                                            "007,decade,1990s,1"])
    kg = load_knowledge_graph(csv, item="movie", relation="rel", entity="ent")
    assert kg.triples.to_numpy().tolist() == [["1", "genre", "Comedy"], ["007", "decade", "1990s"]]
    assert kg.name == "kg"
    tsv = write_lines(tmp_path / "kg.tsv", ["item_id\trelation\tentity", "1\tgenre\tSci-Fi, Drama"])
    assert load_knowledge_graph(tsv, name="x").triples.to_numpy().tolist() == [["1", "genre", "Sci-Fi, Drama"]]
    parquet = tmp_path / "kg.parquet"
    pd.DataFrame({"item_id": [1, 2], "relation": ["genre", "year"], "entity": ["Comedy", "1995"]}).to_parquet(parquet)
    assert load_knowledge_graph(parquet).triples.to_numpy().tolist() == [["1", "genre", "Comedy"],
                                                                         ["2", "year", "1995"]]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_knowledge_graph(tmp_path / "absent.csv")
    missing = write_lines(tmp_path / "missing.csv", ["item_id,relation,object", "1,genre,Comedy"])
    raises_data_error(load_knowledge_graph, missing, path=missing, column="entity", match="missing column")
    empty = write_lines(tmp_path / "empty.csv", ["item_id,relation,entity", "1,genre,Comedy", "", "2,genre,"])
    raises_data_error(load_knowledge_graph, empty, path=empty, line=4, column="entity", match="empty entity")
    no_item = write_lines(tmp_path / "no_item.csv", ["item_id,relation,entity", ",genre,Comedy"])
    raises_data_error(load_knowledge_graph, no_item, path=no_item, line=2, column="item_id", match="empty item id")
    no_relation = write_lines(tmp_path / "no_rel.csv", ["item_id,relation,entity", "1,genre,x", "2, ,x"])
    raises_data_error(load_knowledge_graph, no_relation, line=3, column="relation", match="empty relation")
    header = write_lines(tmp_path / "header.csv", ["item_id,relation,entity"])
    raises_data_error(load_knowledge_graph, header, path=header, match="no triples")
    blank = tmp_path / "blank.csv"
    blank.write_bytes(b"")
    raises_data_error(load_knowledge_graph, blank, path=blank, match="no triples")
    fields = write_lines(tmp_path / "fields.csv", ["item_id,relation,entity", "1,genre,a", "2,genre"])
    raises_data_error(load_knowledge_graph, fields, line=3, match="expected 3 fields")
    parquet = tmp_path / "null.parquet"
    pd.DataFrame({"item_id": ["1", "2"], "relation": ["g", "g"], "entity": ["x", None]}).to_parquet(parquet)
    raises_data_error(load_knowledge_graph, parquet, path=parquet, column="entity", match="missing entity (row 1")


# --- MovieLens -------------------------------------------------------------------------------

TAGS_CSV = [
    "userId,movieId,tag,timestamp",
    "1,1,Pixar,1139045764", "2,1, pixar ,1139045765", "2,1,pixar,1139045766",  # 2 users
    "3,1,funny,1139045767", "3,1,FUNNY,1139045768",  # one user twice: not enough
    '4,3,"politics, satire",1139045769', '5,3,"Politics, Satire",1139045770',
    "6,99,pixar,1", "7,99,pixar,2",  # an unknown movie
    "8,6,,3", "9,6,,4",  # blank tags are skipped
]


def triples_of(kg):
    return set(map(tuple, kg.triples.to_numpy().tolist()))


def test_movielens_genres_and_decades(tmp_path):
    data = load_movielens(ml_latest(tmp_path))
    assert isinstance(data.knowledge, KnowledgeGraph)
    assert triples_of(data.knowledge) == {
        ("1", "genre", g) for g in ("Adventure", "Animation", "Children", "Comedy", "Fantasy")} | {
        ("1", "decade", "1990s"), ("3", "genre", "Comedy"), ("3", "genre", "Drama"), ("3", "genre", "Romance"),
        ("3", "decade", "1990s"), ("6", "decade", "2000s")}
    assert "tag" not in data.knowledge.relation_names()  # no tags.csv
    dat = load_movielens(ml1m(tmp_path))
    assert ("1193", "decade", "1970s") in triples_of(dat.knowledge)
    assert ("661", "genre", "Sci-Fi") in triples_of(dat.knowledge)
    hundred = load_movielens(ml100k(tmp_path))
    kg = hundred.knowledge
    assert triples_of(kg.restricted_to(["377"])) == set()  # "unknown": no genre, no year
    assert triples_of(kg.restricted_to(["302"])) == {("302", "genre", "Drama"), ("302", "decade", "1990s")}


def test_movielens_without_item_table_has_no_knowledge(tmp_path):
    with pytest.warns(DataWarning, match="u.item"):
        data = load_movielens(ml100k(tmp_path, items=None))
    assert data.knowledge is None


def test_movielens_tags(tmp_path):
    directory = ml_latest(tmp_path)
    write_lines(directory / "tags.csv", TAGS_CSV)
    data = load_movielens(directory)
    tags = {t for t in triples_of(data.knowledge) if t[1] == "tag"}
    assert tags == {("1", "tag", "pixar"), ("3", "tag", "politics, satire")}
    assert ("1", "genre", "Comedy") in triples_of(data.knowledge)
    # The standalone function finds the same file from the metadata, or takes a path, or none.
    assert triples_of(movielens_knowledge_graph(data)) == triples_of(data.knowledge)
    assert not {t for t in triples_of(movielens_knowledge_graph(data, tags=None)) if t[1] == "tag"}
    looser = movielens_knowledge_graph(data, tags=directory / "tags.csv", min_tag_users=1)
    assert ("1", "tag", "funny") in triples_of(looser)
    # Each item's triples are together, in item-table order.
    assert data.knowledge.triples["item_id"].drop_duplicates().tolist() == ["1", "3", "6"]
    assert read_movielens_tags(directory / "tags.csv").columns.tolist() == ["item_id", "tag"]


def test_movielens_malformed_tags(tmp_path):
    directory = ml_latest(tmp_path)
    tags = write_lines(directory / "tags.csv", TAGS_CSV[:3] + ["x,1,pixar,5"])
    raises_data_error(load_movielens, directory, path=tags, line=4, column="userId")
    write_lines(tags, ["userId,movieId,label", "1,1,a"])
    raises_data_error(load_movielens, directory, path=tags, column="tag", match="missing column")
    write_lines(tags, TAGS_CSV[:2] + ["1,2"])
    raises_data_error(load_movielens, directory, path=tags, line=3, match="expected 4 fields")
    write_lines(tags, TAGS_CSV[:1])  # only a header: no tags, no error
    assert "tag" not in load_movielens(directory).knowledge.relation_names()


def test_interactions_knowledge_field():
    log = pd.DataFrame({"user_id": ["1"], "item_id": ["a"], "timestamp": np.array([5], dtype=np.int64)})
    data = Interactions(log, None, "x", {}, graph())
    assert data.knowledge is not None and "knowledge=7 triples" in repr(data)
    assert Interactions(log).knowledge is None
    with pytest.raises(DataError, match="KnowledgeGraph"):
        Interactions(log, knowledge=TRIPLES)


def test_importing_knowledge_does_not_import_tensorflow():
    code = "import sys, tfmarl.data.knowledge; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- synthetic -------------------------------------------------------------------------------

SYNTH = dict(n_users=80, n_items=400, n_categories=6, interactions_per_user=10, seed=5)


@pytest.fixture(scope="module")
def synthetic_pair():
    return generate_synthetic(**SYNTH), generate_synthetic(**SYNTH, knowledge_graph=True)


def test_synthetic_knowledge_leaves_the_data_unchanged(synthetic_pair):
    plain, rich = synthetic_pair
    assert plain.knowledge is None and isinstance(rich.knowledge, KnowledgeGraph)
    pd.testing.assert_frame_equal(plain.log, rich.log)
    pd.testing.assert_frame_equal(plain.items, rich.items)
    assert set(rich.metadata) - set(plain.metadata) == {"item_creator"}
    for key, value in plain.metadata.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == rich.metadata[key].dtype and value.tobytes() == rich.metadata[key].tobytes()
        else:
            assert rich.metadata[key] == value, key


def test_synthetic_knowledge_structure(synthetic_pair):
    _, rich = synthetic_pair
    kg, n_items = rich.knowledge, SYNTH["n_items"]
    assert kg.relation_names() == ["creator", "studio"]
    per = kg.triples.groupby(["item_id", "relation"]).size()
    assert len(per) == 2 * n_items and (per == 1).all()  # every item: one creator, one studio
    assert set(kg.item_ids()) == set(rich.items.index)
    creator = rich.metadata["item_creator"]
    assert creator.shape == (n_items,) and creator.min() == 0
    n_creators = creator.max() + 1
    assert 0.6 * n_items // 8 <= n_creators <= n_items // 8 and len(np.unique(creator)) == n_creators
    names = kg.triples.loc[kg.triples["relation"] == "creator"].set_index("item_id")["entity"]
    assert all(names[str(i + 1)] == f"creator {c + 1}" for i, c in enumerate(creator))
    studios = kg.triples.loc[kg.triples["relation"] == "studio", "entity"].nunique()
    assert 2 <= studios <= n_items // 20
    again = generate_synthetic(**SYNTH, knowledge_graph=True)
    pd.testing.assert_frame_equal(again.knowledge.triples, kg.triples)


def mean_pair_cosine(unit, groups):
    same = groups[:, None] == groups[None, :]
    np.fill_diagonal(same, False)
    return float((unit @ unit.T)[same].mean())


def test_synthetic_creators_have_close_factors(synthetic_pair):
    _, rich = synthetic_pair
    factors = rich.metadata["item_factors"].astype(np.float64)
    unit = factors / np.linalg.norm(factors, axis=1, keepdims=True)
    creator = rich.metadata["item_creator"]
    within_creator = mean_pair_cosine(unit, creator)
    within_category = mean_pair_cosine(unit, rich.metadata["item_category"])
    cosines = unit @ unit.T
    random_pairs = float(cosines[np.triu_indices(len(unit), 1)].mean())
    assert within_creator > random_pairs + 0.5
    assert within_creator > within_category + 0.01  # the creator says more than the primary category
    studio = pd.Series(rich.knowledge.triples.query("relation == 'studio'").set_index("item_id")["entity"])
    studio_codes = pd.factorize(studio.reindex([str(i + 1) for i in range(len(unit))]))[0]
    assert mean_pair_cosine(unit, studio_codes) < random_pairs + 0.15  # studios are noise


def others_mean(values, groups):
    """Per item, the mean of ``values`` over the other items of its group (NaN if alone)."""
    total, count = np.bincount(groups, values), np.bincount(groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total[groups] - values) / (count[groups] - 1)


def test_synthetic_creators_tell_a_new_items_popularity(synthetic_pair):
    _, rich = synthetic_pair
    popularity = rich.metadata["item_popularity"].astype(np.float64)
    for groups, low, high in ((rich.metadata["item_creator"], 0.5, 1.0), (rich.metadata["item_category"], -0.2, 0.2)):
        peers = others_mean(popularity, groups)
        alone = np.isnan(peers)
        assert alone.mean() < 0.05
        assert low < np.corrcoef(popularity[~alone], peers[~alone])[0, 1] < high


def test_synthetic_knowledge_graph_argument_is_checked():
    with pytest.raises(ValueError, match="knowledge_graph"):
        generate_synthetic(**SYNTH, knowledge_graph="yes")
