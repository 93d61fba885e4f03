"""Tests for the MovieLens and generic interaction loaders, on small files written here."""

import gzip
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from tfmarl.data.errors import DataError, DataWarning
from tfmarl.data.interactions import Interactions
from tfmarl.data.logs import load_interactions
from tfmarl.data.movielens import (ML100K_GENRES, MOVIELENS_LAYOUTS, MOVIELENS_URL, MovieLensNotFoundError,
                                   describe_movielens_layouts, load_movielens)

# --- writing fake MovieLens directories ------------------------------------------------------

U_DATA = ["196\t242\t3\t881250949", "186\t302\t3\t891717742", "22\t377\t1\t878887116",
          "196\t302\t5\t881250950", "22\t242\t4\t878887117"]
FLAGS_ACTION_COMEDY = "|".join("1" if g in ("Action", "Comedy") else "0" for g in ML100K_GENRES)
FLAGS_DRAMA = "|".join("1" if g == "Drama" else "0" for g in ML100K_GENRES)
FLAGS_NONE = "|".join("0" for _ in ML100K_GENRES)
U_ITEM = [
    f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|{FLAGS_ACTION_COMEDY}",
    f"302|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/x|{FLAGS_DRAMA}",
    f"377|unknown||||{FLAGS_NONE}",
]
U_GENRE = [f"{g}|{i}" for i, g in enumerate(ML100K_GENRES)] + [""]

RATINGS_DAT = ["1::1193::5::978300760", "1::661::3::978302109", "2::1193::4::978298413", "2::3408::1::978299000"]
MOVIES_DAT = [
    "1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
    "661::Star Wars: Episode IV - A New Hope (1977)::Action|Adventure|Sci-Fi",
    '3408::"Great Performances" Cats (1998)::Musical',
    "2000::Gué, Le (1999)::Comedy|Romance",
]

RATINGS_CSV = ["userId,movieId,rating,timestamp", "1,1,4.0,964982703", "1,3,4.5,964981247",
               "2,6,0.5,964982224", "3,1,5.0,964983815"]
MOVIES_CSV = [
    "movieId,title,genres",
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy",
    '3,"American President, The (1995)",Comedy|Drama|Romance',
    "6,Amélie (2001),(no genres listed)",
]


def write_lines(path, lines, encoding="utf-8"):
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def ml100k(tmp_path, data=U_DATA, items=U_ITEM, genre=U_GENRE):
    directory = tmp_path / "ml-100k"
    directory.mkdir()
    write_lines(directory / "u.data", data, "latin-1")
    if items is not None:
        write_lines(directory / "u.item", items, "latin-1")
    if genre is not None:
        write_lines(directory / "u.genre", genre, "latin-1")
    return directory


def ml1m(tmp_path, ratings=RATINGS_DAT, movies=MOVIES_DAT, name="ml-1m"):
    directory = tmp_path / name
    directory.mkdir()
    write_lines(directory / "ratings.dat", ratings, "latin-1")
    write_lines(directory / "movies.dat", movies, "latin-1")
    return directory


def ml_latest(tmp_path, ratings=RATINGS_CSV, movies=MOVIES_CSV, name="ml-latest-small"):
    directory = tmp_path / name
    directory.mkdir()
    write_lines(directory / "ratings.csv", ratings)
    write_lines(directory / "movies.csv", movies)
    return directory


def raises_data_error(func, *args, path=None, line=None, column=None, match=None, **kwargs) -> DataError:
    """Calls func, expecting DataError at the given place; returns it."""
    with pytest.raises(DataError) as info:
        func(*args, **kwargs)
    error = info.value
    if path is not None:
        assert error.path == str(path) and str(path) in str(error)
    if line is not None:
        assert error.line == line and f"line {line}" in str(error), str(error)
    if column is not None:
        assert error.column == column and repr(column) in str(error), str(error)
    if match is not None:
        assert match in str(error), str(error)
    return error


# --- MovieLens layouts -----------------------------------------------------------------------


def test_ml100k_layout(tmp_path):
    data = load_movielens(ml100k(tmp_path))
    assert isinstance(data, Interactions) and data.name == "ml-100k"
    log = data.log
    assert list(log.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert log["user_id"].tolist() == ["196", "186", "22", "196", "22"]
    assert log["item_id"].tolist() == ["242", "302", "377", "302", "242"]
    assert log["timestamp"].dtype == np.int64 and log["timestamp"].iloc[0] == 881250949
    assert log["rating"].dtype == np.float64 and log["rating"].tolist() == [3.0, 3.0, 1.0, 5.0, 4.0]
    items = data.items
    assert items.loc["302", "title"] == "Misérables, Les (1995)"  # latin-1 é
    assert items.loc["242", "categories"] == ("Action", "Comedy")
    assert items.loc["377", "categories"] == ()
    assert items.loc["242", "text"] == "Kolya (1996)"
    assert data.metadata["duplicates"] == 0
    assert len(ML100K_GENRES) == 19


def test_ml100k_genre_names_from_u_genre_and_default(tmp_path):
    renamed = [line.replace("Action", "Action!") for line in U_GENRE]
    assert load_movielens(ml100k(tmp_path, genre=renamed)).items.loc["242", "categories"] == ("Action!", "Comedy")
    other = tmp_path / "other"
    other.mkdir()
    assert load_movielens(ml100k(other, genre=None)).items.loc["242", "categories"] == ("Action", "Comedy")


def test_ml100k_path_may_be_a_file_in_the_directory(tmp_path):
    assert load_movielens(ml100k(tmp_path) / "u.data").num_interactions == 5


def test_ml1m_layout(tmp_path):
    data = load_movielens(ml1m(tmp_path))
    assert data.name == "ml-1m"
    assert data.log["user_id"].tolist() == ["1", "1", "2", "2"]
    assert data.log["item_id"].tolist() == ["1193", "661", "1193", "3408"]
    assert data.log["rating"].tolist() == [5.0, 3.0, 4.0, 1.0]
    assert data.log["timestamp"].tolist() == [978300760, 978302109, 978298413, 978299000]
    items = data.items
    assert items.loc["661", "title"] == "Star Wars: Episode IV - A New Hope (1977)"  # ':' inside a field
    assert items.loc["661", "categories"] == ("Action", "Adventure", "Sci-Fi")
    assert items.loc["3408", "title"] == '"Great Performances" Cats (1998)'  # quotes are literal
    assert items.loc["2000", "title"] == "Gué, Le (1999)"
    assert items.loc["2000", "categories"] == ("Comedy", "Romance")


def test_ml10m_is_named_by_directory_and_allows_half_stars(tmp_path):
    ratings = RATINGS_DAT[:-1] + ["2::3408::3.5::978299000"]
    data = load_movielens(ml1m(tmp_path, ratings=ratings, name="ml-10M100K"))
    assert data.name == "ml-10m" and data.log["rating"].iloc[-1] == 3.5


def test_ml_latest_layout(tmp_path):
    data = load_movielens(ml_latest(tmp_path))
    assert data.name == "ml-latest-small"
    assert data.log["rating"].tolist() == [4.0, 4.5, 0.5, 5.0]
    assert data.log["item_id"].tolist() == ["1", "3", "6", "1"]
    items = data.items
    assert items.loc["3", "title"] == "American President, The (1995)"  # quoted comma
    assert items.loc["3", "categories"] == ("Comedy", "Drama", "Romance")
    assert items.loc["6", "title"] == "Amélie (2001)"
    assert items.loc["6", "categories"] == ()  # "(no genres listed)"


def test_ml_latest_name_defaults_when_directory_is_renamed(tmp_path):
    assert load_movielens(ml_latest(tmp_path, name="movies")).name == "ml-latest"


def test_missing_movies_file_warns_and_gives_no_item_table(tmp_path):
    with pytest.warns(DataWarning, match="u.item"):
        data = load_movielens(ml100k(tmp_path, items=None))
    assert data.items is None and data.num_interactions == 5


EXPECTED_FILES = {"ml-100k": ("u.data", "u.item"), "ml-1m": ("ratings.dat", "movies.dat"),
                  "ml-latest-small": ("ratings.csv", "movies.csv")}


def assert_says_where_to_get_movielens(message):
    """The message names every layout's files and where to download each archive."""
    assert MOVIELENS_URL == "https://grouplens.org/datasets/movielens/" and MOVIELENS_URL in message
    assert "https://files.grouplens.org/datasets/movielens/" in message
    lines = message.splitlines()
    for dataset, files in EXPECTED_FILES.items():
        line = next(x for x in lines if x.strip().startswith(dataset) or f", {dataset}" in x.split(":")[0])
        assert all(name in line for name in files) and f"{dataset}.zip" in line, line
    for archive in ("ml-10m.zip", "ml-latest.zip", "ml-25m.zip"):
        assert archive in message
    assert "data: {source: movielens, path: /path/to/ml-100k}" in message


def test_missing_directory(tmp_path):
    error = raises_data_error(load_movielens, tmp_path / "nowhere", path=tmp_path / "nowhere",
                              match="no such directory")
    assert isinstance(error, MovieLensNotFoundError) and isinstance(error, FileNotFoundError)
    assert_says_where_to_get_movielens(str(error))


def test_unrecognised_directory_lists_expected_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    error = raises_data_error(load_movielens, tmp_path, path=tmp_path, match="found notes.txt")
    assert isinstance(error, MovieLensNotFoundError)
    assert_says_where_to_get_movielens(str(error))


def test_empty_directory_says_so(tmp_path):
    assert_says_where_to_get_movielens(str(raises_data_error(load_movielens, tmp_path, match="found nothing")))


@pytest.mark.parametrize("present, message", [
    (("u.item", "u.genre"), "u.item and u.genre but no u.data (the ratings of ml-100k)"),
    (("movies.dat",), "movies.dat but no ratings.dat (the ratings of ml-1m, ...)"),
    (("movies.csv", "u.item"), "movies.csv but no ratings.csv"),
])
def test_partial_extraction_names_the_missing_ratings_file(tmp_path, present, message):
    for name in present:
        (tmp_path / name).write_bytes(b"")  # empty files: only their names matter here
    error = raises_data_error(load_movielens, tmp_path, path=tmp_path, match=message)
    assert_says_where_to_get_movielens(str(error))


def test_data_one_level_down_is_pointed_at(tmp_path):
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "ratings.dat").write_bytes(b"")
    (tmp_path / "other").mkdir()
    raises_data_error(load_movielens, tmp_path, path=tmp_path,
                      match=f"MovieLens data is one level down: pass {tmp_path / 'ml-1m'}")


def test_zip_archive_is_refused_with_a_hint(tmp_path):
    archive = tmp_path / "ml-100k.zip"
    archive.write_bytes(b"PK\x03\x04")  # a malformed stub: it must not be opened
    error = raises_data_error(load_movielens, archive, path=archive, match="unzip ml-100k.zip and pass the directory")
    assert_says_where_to_get_movielens(str(error))


def test_describe_movielens_layouts_covers_every_layout():
    text = describe_movielens_layouts()
    assert_says_where_to_get_movielens(text)
    assert len(text.splitlines()) == len(MOVIELENS_LAYOUTS) + 2
    for layout in MOVIELENS_LAYOUTS:
        assert len(layout.archives) == len(layout.datasets)
        assert all(name.endswith(".zip") for name, _ in layout.archives)
        assert layout.describe() in text and layout.ratings in layout.files()


# --- MovieLens bad inputs --------------------------------------------------------------------


def test_empty_ratings_file(tmp_path):
    directory = ml100k(tmp_path)
    (directory / "u.data").write_bytes(b"")
    raises_data_error(load_movielens, directory, path=directory / "u.data", match="empty")


@pytest.mark.parametrize("bad_line, found", [("22\t377\t878887116", 3), ("22\t377\t1\t878887116\t9", 5)])
def test_wrong_field_count(tmp_path, bad_line, found):
    data = U_DATA[:2] + [bad_line] + U_DATA[3:]
    directory = ml100k(tmp_path, data=data)
    raises_data_error(load_movielens, directory, path=directory / "u.data", line=3,
                      match=f"expected 4 fields, found {found}")


def test_wrong_field_count_on_first_line(tmp_path):
    directory = ml100k(tmp_path, data=["196\t242\t3\t881250949\t7"] + U_DATA[1:])
    raises_data_error(load_movielens, directory, path=directory / "u.data", line=1, match="found 5")


def test_line_numbers_count_blank_lines(tmp_path):
    directory = ml100k(tmp_path, data=U_DATA[:2] + ["", ""] + ["22\tx\t1\t878887116"])
    raises_data_error(load_movielens, directory, path=directory / "u.data", line=5, column="item id")


def test_short_line_in_dat_file(tmp_path):
    directory = ml1m(tmp_path, ratings=RATINGS_DAT[:1] + ["1::661::3"] + RATINGS_DAT[2:])
    raises_data_error(load_movielens, directory, path=directory / "ratings.dat", line=2, match="expected 4 fields")


@pytest.mark.parametrize("value, problem", [
    ("-5", "negative"), ("12.5", "not an integer"), ("abc", "not an integer"), ("4294967296", "large"), ("", "empty"),
])
def test_bad_movielens_ids(tmp_path, value, problem):
    data = U_DATA[:3] + [f"{value}\t302\t5\t881250950"] + U_DATA[4:]
    directory = ml100k(tmp_path, data=data)
    raises_data_error(load_movielens, directory, path=directory / "u.data", line=4, column="user id", match=problem)


@pytest.mark.parametrize("value, problem", [
    ("6", "outside ml-100k's scale"), ("0", "outside"), ("3.5", "outside"), ("nan", "not a finite number"),
    ("inf", "not a finite number"), ("good", "not a finite number"), ("", "empty rating"),
])
def test_bad_ratings_ml100k(tmp_path, value, problem):
    data = U_DATA[:1] + [f"186\t302\t{value}\t891717742"] + U_DATA[2:]
    directory = ml100k(tmp_path, data=data)
    raises_data_error(load_movielens, directory, path=directory / "u.data", line=2, column="rating", match=problem)


def test_rating_scale_ml1m_and_ml_latest(tmp_path):
    one_m = ml1m(tmp_path, ratings=RATINGS_DAT[:2] + ["2::1193::4.5::978298413"])
    raises_data_error(load_movielens, one_m, line=3, column="Rating", match="ml-1m")
    latest = ml_latest(tmp_path, ratings=RATINGS_CSV[:3] + ["2,6,5.5,964982224"])
    # Line 4 of ratings.csv: the header is line 1.
    raises_data_error(load_movielens, latest, path=latest / "ratings.csv", line=4, column="rating", match="0.5 to 5")
    other = tmp_path / "x"
    other.mkdir()
    latest = ml_latest(other, ratings=RATINGS_CSV[:3] + ["2,6,4.25,964982224"])
    raises_data_error(load_movielens, latest, line=4, column="rating", match="steps of 0.5")


def test_unparsable_timestamp_shows_value_and_line(tmp_path):
    directory = ml100k(tmp_path, data=U_DATA[:4] + ["22\t242\t4\tyesterday"])
    error = raises_data_error(load_movielens, directory, path=directory / "u.data", line=5, column="timestamp")
    assert "'yesterday'" in str(error)


def test_negative_movielens_timestamp(tmp_path):
    directory = ml100k(tmp_path, data=U_DATA[:4] + ["22\t242\t4\t-1"])
    raises_data_error(load_movielens, directory, line=5, column="timestamp", match="negative")


def test_missing_column_lists_columns_found(tmp_path):
    directory = ml_latest(tmp_path, ratings=["userId,movieId,score,timestamp"] + [r for r in RATINGS_CSV[1:]])
    error = raises_data_error(load_movielens, directory, path=directory / "ratings.csv", column="rating")
    assert "'score'" in str(error) and "'userId'" in str(error)


def test_header_only_ratings_csv(tmp_path):
    directory = ml_latest(tmp_path, ratings=RATINGS_CSV[:1])
    raises_data_error(load_movielens, directory, path=directory / "ratings.csv", match="no data rows")


def test_bad_utf8_in_movies_csv(tmp_path):
    directory = ml_latest(tmp_path)
    lines = [line.encode() for line in MOVIES_CSV]
    lines[2] = b'3,"American President, The (1995)",Comedy|Dr\xe9ma'  # latin-1 in a UTF-8 file
    (directory / "movies.csv").write_bytes(b"\n".join(lines) + b"\n")
    offset = len(b"\n".join(lines[:2])) + 1 + lines[2].index(b"\xe9")
    error = raises_data_error(load_movielens, directory, path=directory / "movies.csv", line=3)
    assert f"byte offset {offset}" in str(error) and "utf-8" in str(error)


def test_bad_genre_flag(tmp_path):
    items = U_ITEM[:1] + [U_ITEM[1][:-1] + "2"] + U_ITEM[2:]
    directory = ml100k(tmp_path, items=items)
    raises_data_error(load_movielens, directory, path=directory / "u.item", line=2, column="Western", match="0 or 1")


def test_duplicate_movie_id(tmp_path):
    directory = ml_latest(tmp_path, movies=MOVIES_CSV + ['3,"Other, The (2000)",Drama'])
    raises_data_error(load_movielens, directory, path=directory / "movies.csv", line=5, column="movieId",
                      match="twice")


def test_line_numbers_count_quoted_newlines(tmp_path):
    movies = MOVIES_CSV[:2] + ['3,"Two\nLines (1995)",Comedy', "x,Bad (1999),Drama"]
    directory = ml_latest(tmp_path, movies=movies)
    raises_data_error(load_movielens, directory, path=directory / "movies.csv", line=5, column="movieId")


# --- duplicates ------------------------------------------------------------------------------

DUPLICATED = U_DATA + [U_DATA[0], U_DATA[2], U_DATA[0]]  # lines 6, 7, 8 repeat lines 1, 3, 1


def test_duplicates_warn_keeps_them(tmp_path):
    with pytest.warns(DataWarning) as record:
        data = load_movielens(ml100k(tmp_path, data=DUPLICATED))
    message = str(record[0].message)
    assert "3 duplicate" in message and "lines 6, 7, 8" in message
    assert data.num_interactions == 8 and data.metadata["duplicates"] == 3


def test_duplicates_drop_keeps_first(tmp_path):
    with pytest.warns(DataWarning, match="dropped 3"):
        data = load_movielens(ml100k(tmp_path, data=DUPLICATED), on_duplicates="drop")
    assert data.num_interactions == 5 and data.metadata["duplicates"] == 3
    assert data.log["user_id"].tolist() == ["196", "186", "22", "196", "22"]


def test_duplicates_error_names_first_repeat(tmp_path):
    directory = ml100k(tmp_path, data=DUPLICATED)
    raises_data_error(load_movielens, directory, on_duplicates="error", path=directory / "u.data", line=6,
                      match="line 1")


def test_no_duplicates_no_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_movielens(ml100k(tmp_path), on_duplicates="error")


def test_unknown_duplicates_policy(tmp_path):
    for load in (lambda: load_movielens(ml100k(tmp_path), on_duplicates="ignore"),
                 lambda: load_interactions(tmp_path / "x.csv", user="u", item="i", timestamp="t", on_duplicates=None)):
        with pytest.raises(ValueError, match="'warn', 'drop', 'error'"):
            load()


# --- generic logs ----------------------------------------------------------------------------

LOG_CSV = [
    "user,item,ts,score,kind",
    "007,a1,2020-01-01T00:00:00Z,4.5,click",
    "u2,a2,2020-01-01T01:00:00+01:00,3,view",
    "007,a2,2020-01-02,1,",
]
T0 = 1577836800  # 2020-01-01T00:00:00Z


def load_log(path, **kwargs):
    defaults = dict(user="user", item="item", timestamp="ts")
    return load_interactions(path, **{**defaults, **kwargs})


def test_csv_with_iso_timestamps(tmp_path):
    data = load_log(write_lines(tmp_path / "events.csv", LOG_CSV), rating="score", event="kind")
    assert data.name == "events"
    log = data.log
    assert log["user_id"].tolist() == ["007", "u2", "007"]  # "007" stays a string
    assert log["timestamp"].tolist() == [T0, T0, T0 + 86400]  # +01:00 converted to UTC
    assert log["timestamp"].dtype == np.int64
    assert log["rating"].tolist() == [4.5, 3.0, 1.0] and log["rating"].dtype == np.float64
    assert log["event"].tolist() == ["click", "view", ""]
    assert data.items is None and data.metadata["duplicates"] == 0


def test_optional_columns_absent(tmp_path):
    log = load_log(write_lines(tmp_path / "events.csv", LOG_CSV)).log
    assert list(log.columns) == ["user_id", "item_id", "timestamp"]


def test_tsv_by_extension_and_integer_timestamps(tmp_path):
    lines = ["user\titem\tts", "1\t10\t1600000000", "2\t010\t1600000001.0"]
    log = load_log(write_lines(tmp_path / "log.tsv", lines)).log
    assert log["item_id"].tolist() == ["10", "010"]
    assert log["timestamp"].tolist() == [1600000000, 1600000001]


def test_separator_given_or_sniffed(tmp_path):
    lines = [line.replace(",", ";") for line in LOG_CSV]
    assert load_log(write_lines(tmp_path / "log.txt", lines)).num_interactions == 3
    assert load_log(write_lines(tmp_path / "log.dat", lines), sep=";").num_interactions == 3
    lines = [line.replace(",", "::") for line in LOG_CSV]
    assert load_log(write_lines(tmp_path / "log2.dat", lines), sep="::").num_interactions == 3


def test_gzipped_csv(tmp_path):
    path = tmp_path / "log.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(LOG_CSV) + "\n").encode()))
    assert load_log(path).log["user_id"].tolist() == ["007", "u2", "007"]
    assert load_log(path).name == "log"


def test_timestamp_format(tmp_path):
    lines = ["user,item,ts", "a,b,01/02/2020 10:30", "a,c,31/12/2019 00:00"]
    log = load_log(write_lines(tmp_path / "log.csv", lines), timestamp_format="%d/%m/%Y %H:%M").log
    assert log["timestamp"].tolist() == [T0 + 31 * 86400 + 10 * 3600 + 1800, T0 - 86400]


def test_parquet_log_and_item_table(tmp_path):
    log = pd.DataFrame({
        "uid": [7, 8, 7],
        "iid": ["007", "x", "x"],
        "when": pd.to_datetime(["2020-01-01 00:00:00", "2020-01-01 00:00:01", "2020-01-02 00:00:00"]),
        "stars": [1, 2, 3],
    })
    log.to_parquet(tmp_path / "log.parquet")
    items = pd.DataFrame({"id": ["007", "x"], "name": ["Bond", "X"], "tags": [["spy", "action"], []]})
    items.to_parquet(tmp_path / "items.pq")
    data = load_interactions(tmp_path / "log.parquet", user="uid", item="iid", timestamp="when", rating="stars",
                             items=tmp_path / "items.pq", item_id="id", item_title="name", item_categories="tags")
    assert data.log["user_id"].tolist() == ["7", "8", "7"]
    assert data.log["timestamp"].tolist() == [T0, T0 + 1, T0 + 86400]
    assert data.log["rating"].dtype == np.float64
    assert data.items.loc["007"].tolist() == ["Bond", ("spy", "action"), "Bond"]
    assert data.items.loc["x", "categories"] == ()


def test_parquet_directory(tmp_path):
    directory = tmp_path / "log"
    directory.mkdir()
    pd.DataFrame({"u": ["a", "a"], "i": ["x", "y"], "t": [1, 2]}).to_parquet(directory / "part-0.parquet")
    pd.DataFrame({"u": ["b"], "i": ["x"], "t": [3]}).to_parquet(directory / "part-1.parquet")
    assert load_interactions(directory, user="u", item="i", timestamp="t").num_interactions == 3
    (tmp_path / "empty").mkdir()
    raises_data_error(load_interactions, tmp_path / "empty", user="u", item="i", timestamp="t", match="directory")


def test_parquet_integer_timestamps(tmp_path):
    pd.DataFrame({"u": ["a"], "i": ["b"], "t": np.array([1600000000], dtype=np.int64)}).to_parquet(tmp_path / "l.pq")
    assert load_interactions(tmp_path / "l.pq", user="u", item="i", timestamp="t").log["timestamp"].tolist() == [
        1600000000]


def test_csv_item_table(tmp_path):
    write_lines(tmp_path / "items.csv", [
        "item_id,title,genres,blurb", 'a1,"Hello, World",Drama| Comedy,First', "a2,Second,,",
    ])
    data = load_log(write_lines(tmp_path / "events.csv", LOG_CSV), items=tmp_path / "items.csv",
                    item_title="title", item_categories="genres")
    assert data.items.loc["a1"].tolist() == ["Hello, World", ("Drama", "Comedy"), "Hello, World"]
    assert data.items.loc["a2"].tolist() == ["Second", (), "Second"]
    with_text = load_log(tmp_path / "events.csv", items=tmp_path / "items.csv", item_text="blurb")
    assert with_text.items.loc["a1"].tolist() == ["", (), "First"]


# --- generic bad inputs ----------------------------------------------------------------------


def test_missing_log_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_log(tmp_path / "none.csv")
    with pytest.raises(FileNotFoundError):
        load_log(tmp_path / "none.parquet")


@pytest.mark.parametrize("name, content", [("e.csv", b""), ("e.tsv", b"\n\n"), ("e.parquet", b"")])
def test_empty_log_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    raises_data_error(load_log, tmp_path / name, path=tmp_path / name, match="empty")


def test_not_a_parquet_file(tmp_path):
    (tmp_path / "e.parquet").write_text("user,item,ts\n")
    raises_data_error(load_log, tmp_path / "e.parquet", path=tmp_path / "e.parquet", match="Parquet")


def test_generic_missing_column(tmp_path):
    path = write_lines(tmp_path / "events.csv", LOG_CSV)
    error = raises_data_error(load_log, path, rating="rating", path=path, column="rating")
    assert "'score'" in str(error) and "'kind'" in str(error)
    pd.DataFrame({"u": ["a"], "i": ["b"]}).to_parquet(tmp_path / "l.parquet")
    raises_data_error(load_interactions, tmp_path / "l.parquet", user="u", item="i", timestamp="t", column="t",
                      match="'u'")


def test_generic_unparsable_timestamp(tmp_path):
    path = write_lines(tmp_path / "events.csv", LOG_CSV[:3] + ["007,a2,2020-13-45,1,"])
    error = raises_data_error(load_log, path, path=path, line=4, column="ts")
    assert "'2020-13-45'" in str(error)
    path = write_lines(tmp_path / "n.csv", ["user,item,ts", "a,b,1600000000", "a,c,soon"])
    raises_data_error(load_log, path, line=3, column="ts", match="'soon'")


def test_generic_bad_numeric_timestamps(tmp_path):
    path = write_lines(tmp_path / "f.csv", ["user,item,ts", "a,b,1600000000", "a,c,1600000000.5"])
    raises_data_error(load_log, path, line=3, column="ts", match="whole number")
    path = write_lines(tmp_path / "m.csv", ["user,item,ts", "a,b,1600000000000"])
    raises_data_error(load_log, path, line=2, column="ts", match="milliseconds")


def test_generic_bad_encoding(tmp_path):
    path = tmp_path / "events.csv"
    path.write_bytes(b"user,item,ts\nu1,caf\xe9,1\nu2,x,2\n")
    error = raises_data_error(load_log, path, path=path, line=2)
    assert "byte offset 19" in str(error)  # len(b"user,item,ts\nu1,caf")
    assert load_log(path, encoding="latin-1").log["item_id"].tolist() == ["café", "x"]


def test_generic_wrong_field_count(tmp_path):
    path = write_lines(tmp_path / "events.csv", LOG_CSV[:2] + ["u2,a2"] + LOG_CSV[3:])
    raises_data_error(load_log, path, path=path, line=3, match="expected 5 fields, found 2")
    path = write_lines(tmp_path / "quoted.csv", ['user,item,ts', '"a, b",c,1', 'd,e,2,3'])
    raises_data_error(load_log, path, path=path, line=3, match="expected 3 fields, found 4")


@pytest.mark.parametrize("line, column", [(",a1,1", "user"), ("u1, ,1", "item")])
def test_generic_empty_id(tmp_path, line, column):
    path = write_lines(tmp_path / "events.csv", ["user,item,ts", "u0,a0,1", line])
    raises_data_error(load_log, path, path=path, line=3, column=column, match="empty")


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "abc", ""])
def test_generic_bad_rating(tmp_path, value):
    path = write_lines(tmp_path / "events.csv", ["user,item,ts,r", "u0,a0,1,3", f"u1,a1,2,{value}"])
    raises_data_error(load_log, path, rating="r", path=path, line=3, column="r")


@pytest.mark.parametrize("rows, line, column, problem", [
    (["1,10,1", "-1,11,2"], 3, "user", "user id '-1' is negative"),
    (["1,10,1", "2,99999999999999999999999,2"], 3, "item", "item id '99999999999999999999999' is implausibly large"),
    (["1,+10,1", "2, -7 ,2", "3,-12,3"], 3, "item", "item id ' -7 ' is negative"),  # the first bad line
])
def test_generic_numeric_ids_must_be_plausible(tmp_path, rows, line, column, problem):
    # The README promises a DataError for negative or absurd ids; MovieLens ids are checked the same way.
    path = write_lines(tmp_path / "events.csv", ["user,item,ts"] + rows)
    raises_data_error(load_log, path, path=path, line=line, column=column, match=problem)


def test_generic_numeric_id_columns_must_be_plausible(tmp_path):
    log = pd.DataFrame({"u": np.array([4, -2, 5]), "i": [1.0, 2.0, -3.5], "t": [1, 2, 3]})
    log.to_parquet(tmp_path / "int.parquet")
    error = raises_data_error(load_interactions, tmp_path / "int.parquet", user="u", item="i", timestamp="t",
                              column="u", match="user id '-2' is negative")
    assert "row 1" in str(error)
    log.assign(u=[4, 2, 5]).to_parquet(tmp_path / "float.parquet")
    error = raises_data_error(load_interactions, tmp_path / "float.parquet", user="u", item="i", timestamp="t",
                              column="i", match="item id '-3.5' is negative")
    assert "row 2" in str(error)
    items = write_lines(tmp_path / "items.csv", ["item_id,title", "10,Ten", "-10,Minus ten"])
    raises_data_error(load_log, write_lines(tmp_path / "events.csv", ["user,item,ts", "1,10,1"]), items=items,
                      path=items, line=3, column="item_id", match="item id '-10' is negative")


def test_generic_ids_that_are_names_or_large_codes_are_kept(tmp_path):
    # Only ids that all read as integers are range-checked: "-1" among names is a name too. Large
    # numeric ids (13-digit barcodes, 64-bit hashes) are plausible in a free-form log.
    lines = ["user,item,ts", "sku-12,4006381333931,1", "-1,9223372036854775807,2", "-x,007,3"]
    log = load_log(write_lines(tmp_path / "events.csv", lines)).log
    assert log["user_id"].tolist() == ["sku-12", "-1", "-x"]
    assert log["item_id"].tolist() == ["4006381333931", "9223372036854775807", "007"]
    pd.DataFrame({"u": np.array([0, 2**62], dtype=np.int64), "i": ["a", "b"], "t": [1, 2]}).to_parquet(
        tmp_path / "l.parquet")
    assert load_interactions(tmp_path / "l.parquet", user="u", item="i", timestamp="t").log["user_id"].tolist() == [
        "0", str(2**62)]


def test_parquet_null_id_names_column_and_row(tmp_path):
    pd.DataFrame({"u": ["a", None], "i": ["b", "c"], "t": [1, 2]}).to_parquet(tmp_path / "l.parquet")
    error = raises_data_error(load_interactions, tmp_path / "l.parquet", user="u", item="i", timestamp="t", column="u")
    assert "row 1" in str(error)


def test_item_table_errors(tmp_path):
    log = write_lines(tmp_path / "events.csv", LOG_CSV)
    items = write_lines(tmp_path / "items.csv", ["item_id,title", "a1,One", "a2,Two", "a1,Again"])
    raises_data_error(load_log, log, items=items, item_title="title", path=items, line=4, column="item_id",
                      match="twice")
    raises_data_error(load_log, log, items=items, item_title="name", path=items, column="name", match="'title'")


@pytest.mark.parametrize("mode", ["warn", "drop", "error"])
def test_generic_duplicates(tmp_path, mode):
    path = write_lines(tmp_path / "events.csv", ["user,item,ts", "a,x,1", "a,y,1", "a,x,1", "b,x,1", "a,x,1"])
    if mode == "error":
        raises_data_error(load_log, path, on_duplicates=mode, path=path, line=4, match="line 2")
        return
    with pytest.warns(DataWarning, match="2 duplicate" if mode == "warn" else "dropped 2") as record:
        data = load_log(path, on_duplicates=mode)
    assert data.metadata["duplicates"] == 2
    assert data.num_interactions == (5 if mode == "warn" else 3)
    if mode == "warn":
        assert "lines 4, 6" in str(record[0].message)


def test_loaders_do_not_import_tensorflow():
    code = ("import sys, tfmarl.data.movielens, tfmarl.data.logs, tfmarl.data.synthetic; "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
