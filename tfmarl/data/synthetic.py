"""A synthetic interaction generator with known ground truth, for tests and experiments.

The world: categories with latent centroids; items with a primary category and up to two
secondary ones, a latent vector near their categories' centroids, a Zipf-like popularity and a
title made of their categories' words; users whose interests over categories drift over time.
Each user picks items by softmax(affinity + popularity), never the same item twice.
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

from tfmarl.data.interactions import Interactions

CATEGORY_NAMES = (
    "Adventure", "Comedy", "Drama", "Horror", "Mystery", "Romance", "Sci-Fi", "Thriller", "Western",
    "Fantasy", "Documentary", "Animation", "Musical", "Crime", "War", "Family", "Noir", "Sports",
    "History", "Biography", "Music", "Satire", "Superhero", "Travel",
)

_WORDS = """
Crimson Harbor Chronicles Silent Iron Shadow Golden River Midnight Empire Storm Garden Echo Frontier
Velvet Hollow Lantern Winter Copper Falcon Ember Glass Thunder Orchard Marble Summit Harvest Phantom
Canyon Meadow Silver Tide Comet Fortress Willow Raven Cobalt Prairie Dynasty Mirror Ivory Tempest
Citadel Harmony Wolf Saffron Beacon Serpent Lagoon Nomad Oracle Crown Desert Atlas Horizon Cipher
Quartz Pilgrim Monsoon Sparrow Granite Labyrinth Carnival Voyage Anchor Blossom Circuit Dagger Eclipse
Fable Glacier Haven Island Jubilee Kingdom Legend Mosaic Nebula Outpost Paradox Quest Riddle Sapphire
Throne Utopia Vortex Whisper Zenith Arrow Bramble Cathedral Delta Engine Forge Gallows Hymn Inferno
Jasmine Kestrel Lullaby Meridian Nightfall Obsidian Parade Quiver Rampart Sonnet Tundra Umbra Valley
Wildfire Yonder Amber Badlands Cascade Drifter Emerald Fjord Gambit Hearth Icicle Juniper Keystone
Lighthouse Mariner Nectar Orbit Pinnacle Quarry Rebel Spire Trellis Undertow Vagabond Wanderer
Yearling Zephyr Avalanche Bayou Cinder Dune Estuary Firefly Gossamer Highland Ironwood Jackal
Kaleidoscope Lotus Monolith Nocturne Oasis Pendulum Reverie Solstice Talisman Uprising Verdict
Wreckage Aurora Blizzard Compass Dervish Eden Fathom Gargoyle Hurricane Inkwell Jester Kraken Lament
Mirage Northern Overture Prism Requiem Scarlet Twilight Voltage Warden Alchemy Boulevard Chimera
Dominion Elixir Foxglove Griffin Hologram Juggernaut Kindling Lodestar Maverick Nightingale Odyssey
Parchment Rhapsody Sentinel Tapestry Vanguard Wavelength
""".split()
_SYLLABLES = ("ka", "ro", "mi", "zan", "tel", "vor", "qu", "lis", "dra", "nem", "or", "bel", "sut", "ix", "pha", "gro")

WORDS_PER_CATEGORY = 12
DESCRIPTION_WORDS = 6
SEGMENT = 8  # interests are redrawn every SEGMENT interactions of a user
AFFINITY_SCALE = 10.0
FAVOURITE_BOOST = 2.5
JUMP_SIZE = 2.5
JUMPS_PER_DRIFT = 0.2  # chance of an interest jump per interaction, per unit of interest_drift
LENGTH_SPREAD = 0.6  # sigma of the lognormal number of interactions per user
MIN_INTERACTIONS = 5
DAY = 86_400


def generate_synthetic(
    n_users: int = 1000,
    n_items: int = 500,
    n_categories: int = 12,
    interactions_per_user: int = 50,
    *,
    interest_drift: float = 0.05,
    popularity_skew: float = 1.0,
    seed: int = 0,
    start_time: int = 1_600_000_000,
    knowledge_graph: bool = False,
) -> Interactions:
    """Generates a synthetic interaction log and item table; the same arguments give the same data.

    Users are "1".."n_users" and items "1".."n_items". Each user has a lognormal number of
    interactions around ``interactions_per_user`` (at least min(5, interactions_per_user), at most
    n_items), at strictly increasing timestamps from some time in the year after ``start_time``,
    each on a different item, with a 1-5 rating that grows with the user's affinity to the item.
    ``interest_drift`` is the per-interaction standard deviation of the random walk of a user's
    interest logits (0: interests never change); jumps to a new favourite category happen with
    probability 0.2 * interest_drift per interaction. ``popularity_skew`` is the Zipf exponent of
    item popularity (0: none).

    Ground truth in ``metadata`` (arrays indexed by item/user number minus one):
      item_factors (n_items x latent_dim float32), item_category (primary category index),
      item_popularity (popularity logit), category_names, user_interests_initial and
      user_interests_final (n_users x n_categories float32, rows sum to 1), latent_dim, and the
      arguments (n_users, ..., seed, start_time).

    ``knowledge_graph=True`` also makes ``knowledge`` a `KnowledgeGraph` carrying item signal the
    categories do not: relation "creator" groups items into about n_items // 8 creators (at
    least 2, entities "creator 1", "creator 2", ...), each a style and a standing: seeded
    spherical k-means on the latent factors makes styles of about 32 items, and each style splits
    by popularity into creators of about 8, so a creator's items have close factors (closer than
    a category's) and close popularity (which categories say nothing of: a new item's creator
    tells how popular it is likely to be); relation "studio" is pure noise, a
    random entity out of about n_items // 20 ("studio 1", ...). Every item has exactly one triple
    of each. The creators are ``metadata["item_creator"]`` (0-based creator index per item
    number minus one). The graph uses its own random generator: the log, item table and all other
    metadata are identical whether ``knowledge_graph`` is True or False.
    Raises ValueError for invalid arguments.
    """
    args = _check_arguments(n_users, n_items, n_categories, interactions_per_user, interest_drift,
                            popularity_skew, seed, start_time)
    if not isinstance(knowledge_graph, (bool, np.bool_)):
        raise ValueError(f"knowledge_graph must be True or False, got {knowledge_graph!r}")
    rng = np.random.default_rng(seed)
    latent_dim = max(8, n_categories)
    names = category_names(n_categories)
    centroids = _unit_rows(rng.normal(size=(n_categories, latent_dim)))
    catalog = _make_catalog(rng, n_items, n_categories, centroids, popularity_skew)
    items = _item_table(rng, catalog, names)
    interests = _initial_interests(rng, n_users, n_categories)
    lengths = _sequence_lengths(rng, n_users, interactions_per_user, n_items)
    picks = _pick_items(rng, interests, lengths, centroids, catalog, interest_drift)
    log = _log(rng, picks, lengths, start_time)
    metadata = dict(args)
    metadata.update(
        latent_dim=latent_dim,
        category_names=list(names),
        item_factors=catalog["factors"].astype(np.float32),
        item_category=catalog["primary"],
        item_popularity=catalog["popularity"].astype(np.float32),
        user_interests_initial=_softmax(interests).astype(np.float32),
        user_interests_final=picks["final_interests"].astype(np.float32),
        duplicates=0,
    )
    knowledge = None
    if knowledge_graph:
        knowledge, creators = _knowledge_graph(np.random.default_rng([args["seed"], 7]), catalog)
        metadata["item_creator"] = creators
    return Interactions(log=log, items=items, name="synthetic", metadata=metadata, knowledge=knowledge)


def category_names(n: int) -> list[str]:
    """The first ``n`` category names: genre-like words, then "Category 25", "Category 26", ..."""
    return [CATEGORY_NAMES[k] if k < len(CATEGORY_NAMES) else f"Category {k + 1}" for k in range(n)]


def _check_arguments(n_users, n_items, n_categories, interactions_per_user, interest_drift,
                     popularity_skew, seed, start_time) -> dict:
    def integer(name, value, minimum):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        return int(value)

    def real(name, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        return float(value)

    start = integer("start_time", start_time, 0)
    if start >= 10**11:
        raise ValueError(f"start_time must be in seconds since 1970, got {start_time!r}")
    return dict(
        n_users=integer("n_users", n_users, 1), n_items=integer("n_items", n_items, 1),
        n_categories=integer("n_categories", n_categories, 1),
        interactions_per_user=integer("interactions_per_user", interactions_per_user, 1),
        interest_drift=real("interest_drift", interest_drift), popularity_skew=real("popularity_skew", popularity_skew),
        seed=integer("seed", seed, 0), start_time=start,
    )


# --- catalog -------------------------------------------------------------------------------


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _distinct_others(rng, first: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two indices in [0, n) per entry, distinct from ``first`` and from each other (n >= 3)."""
    a = rng.integers(1, n, size=first.shape)
    b = rng.integers(1, n - 1, size=first.shape)
    b = b + (b >= a)  # skip a's offset, so that b != a
    return (first + a) % n, (first + b) % n


def _make_catalog(rng, n_items: int, n_categories: int, centroids: np.ndarray, skew: float) -> dict:
    """Per item: primary and secondary categories, latent factors and popularity logit."""
    primary = rng.integers(n_categories, size=n_items)
    n_secondary = np.minimum(rng.choice(3, size=n_items, p=[0.5, 0.35, 0.15]), n_categories - 1)
    if n_categories >= 3:
        second, third = _distinct_others(rng, primary, n_categories)
    else:
        second = third = (primary + 1) % n_categories
    secondary = np.stack([np.where(n_secondary >= 1, second, -1), np.where(n_secondary >= 2, third, -1)], axis=1)
    factors = centroids[primary].copy()
    for k in range(2):
        has = secondary[:, k] >= 0
        factors[has] += 0.35 * centroids[secondary[has, k]]
    factors += rng.normal(scale=0.4 / np.sqrt(centroids.shape[1]), size=factors.shape)
    rank = rng.permutation(n_items)
    popularity = -skew * np.log1p(rank)
    return {"primary": primary, "secondary": secondary, "factors": factors, "popularity": popularity}


def _word_lists(rng, n_categories: int) -> np.ndarray:
    """(n_categories, WORDS_PER_CATEGORY) words, no word in two categories."""
    needed = n_categories * WORDS_PER_CATEGORY
    words = list(rng.permutation(_WORDS))
    seen = set(words)
    while len(words) < needed:  # more categories than real words: invent some
        word = "".join(rng.choice(_SYLLABLES, size=rng.integers(2, 4))).capitalize()
        if word not in seen:
            seen.add(word)
            words.append(word)
    return np.array(words[:needed], dtype=object).reshape(n_categories, WORDS_PER_CATEGORY)


def _item_table(rng, catalog: dict, names: list[str]) -> pd.DataFrame:
    """Titles of three words (two from the primary category's list, one from a secondary's)."""
    words = _word_lists(rng, len(names))
    primary, secondary = catalog["primary"], catalog["secondary"]
    n_items = len(primary)
    first = rng.integers(WORDS_PER_CATEGORY, size=n_items)
    second, third = _distinct_others(rng, first, WORDS_PER_CATEGORY)
    third_category = np.where(secondary[:, 0] >= 0, secondary[:, 0], primary)
    third = np.where(third_category == primary, third, rng.integers(WORDS_PER_CATEGORY, size=n_items))
    title = _join([words[primary, first], words[primary, second], words[third_category, third]])
    # The description draws words from all of an item's categories, mostly the primary one.
    own = np.concatenate([primary[:, None], secondary], axis=1)
    slot = np.where(rng.random((n_items, DESCRIPTION_WORDS)) < 0.6, 0,
                    rng.integers(3, size=(n_items, DESCRIPTION_WORDS)))
    category = np.take_along_axis(own, slot, axis=1)
    category = np.where(category >= 0, category, primary[:, None])
    description = words[category, rng.integers(WORDS_PER_CATEGORY, size=category.shape)]
    text = title + ": " + _join([description[:, k] for k in range(DESCRIPTION_WORDS)]).str.lower()
    categories = [
        tuple(names[c] for c in row if c >= 0)
        for row in np.concatenate([primary[:, None], secondary], axis=1).tolist()
    ]
    return pd.DataFrame(
        {"title": title.to_numpy(dtype=object), "categories": pd.Series(categories, dtype=object).to_numpy(),
         "text": text.to_numpy(dtype=object)},
        index=pd.Index(_ids(n_items), name="item_id"),
    )


def _join(columns: list[np.ndarray]) -> pd.Series:
    out = pd.Series(columns[0], dtype=str)
    for column in columns[1:]:
        out = out + " " + pd.Series(column, dtype=str)
    return out


def _ids(n: int) -> np.ndarray:
    return np.arange(1, n + 1).astype(str).astype(object)


# --- knowledge graph -----------------------------------------------------------------------

ITEMS_PER_CREATOR = 8
CREATORS_PER_STYLE = 4  # a style's items split by popularity into this many creators
ITEMS_PER_STUDIO = 20
KMEANS_ITERATIONS = 6
_KMEANS_CHUNK = 2_000_000  # items x centroids similarities computed at once


def _knowledge_graph(rng, catalog: dict):
    """(KnowledgeGraph with "creator" and "studio" triples, 0-based creator per item)."""
    from tfmarl.data.knowledge import KnowledgeGraph

    factors = catalog["factors"]
    n_items = len(factors)
    n_creators = max(2, n_items // ITEMS_PER_CREATOR)
    styles = _clusters(rng, _unit_rows(factors.astype(np.float64)), max(1, n_creators // CREATORS_PER_STYLE))
    creators = _popularity_bands(styles, catalog["popularity"], n_creators)
    studios = rng.integers(min(n_items, max(2, n_items // ITEMS_PER_STUDIO)), size=n_items)
    ids = _ids(n_items)
    triples = pd.DataFrame({
        "item_id": np.concatenate([ids, ids]),
        "relation": np.repeat(np.array(["creator", "studio"], dtype=object), n_items),
        "entity": np.concatenate([_names("creator ", creators), _names("studio ", studios)]),
    })
    return KnowledgeGraph(triples, name="synthetic"), creators


def _names(prefix: str, numbers: np.ndarray) -> np.ndarray:
    return (prefix + pd.Series(numbers + 1).astype(str)).to_numpy(dtype=object)


def _popularity_bands(groups: np.ndarray, popularity: np.ndarray, k: int) -> np.ndarray:
    """Each group split into popularity bands (most popular first), about ``k`` bands in all, a
    share of ``k`` proportional to the group's size (at least one); numbered as `_dense_labels`."""
    n = len(groups)
    order = np.lexsort((-popularity, groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    sizes = np.diff(np.r_[starts, n])
    bands = np.maximum(1, (sizes * k) // n)
    position = np.arange(n) - np.repeat(starts, sizes)
    band = position * np.repeat(bands, sizes) // np.repeat(sizes, sizes)
    labels = np.empty(n, dtype=np.int64)
    labels[order] = np.repeat(np.r_[0, np.cumsum(bands)[:-1]], sizes) + band
    return _dense_labels(labels)


def _dense_labels(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0.. without gaps, in order of each one's first item."""
    present, first = np.unique(labels, return_index=True)
    renumber = np.empty(labels.max() + 1, dtype=np.int64)
    renumber[present[np.argsort(first, kind="stable")]] = np.arange(len(present))
    return renumber[labels]


def _clusters(rng, unit: np.ndarray, k: int) -> np.ndarray:
    """About ``k`` clusters of the unit rows, numbered as `_dense_labels`; every one non-empty.

    Two levels keep it fast for large catalogs: ~sqrt(k) coarse clusters, then each split into a
    share of ``k`` proportional to its size (spherical k-means both times).
    """
    n = len(unit)
    k = min(k, n)
    coarse_k = int(np.ceil(np.sqrt(k)))
    coarse = _spherical_kmeans(rng, unit, coarse_k)
    labels = np.empty(n, dtype=np.int64)
    next_label = 0
    for c in range(coarse_k):
        members = np.flatnonzero(coarse == c)
        if len(members) == 0:
            continue
        share = int(min(len(members), max(1, round(k * len(members) / n))))
        labels[members] = next_label + _spherical_kmeans(rng, unit[members], share)
        next_label += share
    return _dense_labels(labels)  # a cluster may have ended up empty


def _spherical_kmeans(rng, unit: np.ndarray, k: int) -> np.ndarray:
    """Cluster index per row: Lloyd iterations on cosine, from ``k`` distinct rows as seeds."""
    n = len(unit)
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    centroids = unit[rng.choice(n, size=k, replace=False)]
    labels = np.zeros(n, dtype=np.int64)
    chunk = max(1, _KMEANS_CHUNK // k)
    for _ in range(KMEANS_ITERATIONS):
        for start in range(0, n, chunk):
            labels[start:start + chunk] = np.argmax(unit[start:start + chunk] @ centroids.T, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, unit)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        filled = norms[:, 0] > 0
        centroids[filled] = sums[filled] / norms[filled]  # an empty cluster keeps its centroid
    return labels


# --- users and their choices ---------------------------------------------------------------


def _initial_interests(rng, n_users: int, n_categories: int) -> np.ndarray:
    """Interest logits over categories: 1-3 favourites boosted above a noisy base."""
    n_favourites = np.minimum(rng.integers(1, 4, size=n_users), n_categories)
    order = np.argsort(rng.random((n_users, n_categories)), axis=1)
    rank = np.argsort(order, axis=1)
    favourite = rank < n_favourites[:, None]
    boost = FAVOURITE_BOOST * rng.uniform(0.7, 1.3, size=(n_users, n_categories))
    return rng.normal(scale=0.3, size=(n_users, n_categories)) + favourite * boost


def _sequence_lengths(rng, n_users: int, mean: int, n_items: int) -> np.ndarray:
    spread = LENGTH_SPREAD
    lengths = np.rint(mean * rng.lognormal(-spread**2 / 2, spread, size=n_users)).astype(np.int64)
    return np.clip(lengths, min(MIN_INTERACTIONS, mean, n_items), n_items)


def _pick_items(rng, interests: np.ndarray, lengths: np.ndarray, centroids: np.ndarray, catalog: dict,
                drift: float) -> dict:
    """Each user's items in order, sampled segment by segment without replacement.

    Within a segment of SEGMENT interactions a user's interests are fixed, so the segment's items
    are a Gumbel-top-k draw: the same as drawing from the softmax one at a time, without
    replacement. Users are processed in blocks to bound memory.
    """
    n_users, n_items = len(lengths), len(catalog["primary"])
    factors_t = catalog["factors"].T.astype(np.float32)
    popularity = catalog["popularity"].astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    items = np.empty(int(lengths.sum()), dtype=np.int64)
    affinity = np.empty(len(items), dtype=np.float32)
    final = np.empty_like(interests)
    jump_chance = 1.0 - (1.0 - min(1.0, JUMPS_PER_DRIFT * drift)) ** SEGMENT
    block = max(1, min(n_users, 4_000_000 // n_items))
    for start in range(0, n_users, block):
        users = np.arange(start, min(start + block, n_users))
        z = interests[users].copy()
        seen = np.zeros((len(users), n_items), dtype=bool)
        for segment in range(int(np.ceil(lengths[users].max() / SEGMENT))):
            if segment > 0 and drift > 0:
                z += rng.normal(scale=drift * np.sqrt(SEGMENT), size=z.shape)
                jumps = np.flatnonzero(rng.random(len(users)) < jump_chance)
                z[jumps, rng.integers(z.shape[1], size=len(jumps))] += JUMP_SIZE
            active = np.flatnonzero(lengths[users] > segment * SEGMENT)
            weights = _softmax(z[active])
            final[users[active]] = weights
            scores = AFFINITY_SCALE * ((weights @ centroids).astype(np.float32) @ factors_t)
            take = np.minimum(SEGMENT, lengths[users[active]] - segment * SEGMENT)
            chosen = _gumbel_top_k(rng, scores + popularity, seen[active], SEGMENT)
            keep = np.arange(chosen.shape[1])[None, :] < take[:, None]
            rows = np.broadcast_to(np.arange(len(active))[:, None], chosen.shape)[keep]
            columns = chosen[keep]
            seen[active[rows], columns] = True
            position = (offsets[users[active]][:, None] + segment * SEGMENT + np.arange(chosen.shape[1]))[keep]
            items[position] = columns
            affinity[position] = scores[rows, columns]
    return {"items": items, "affinity": affinity, "final_interests": final}


def _gumbel_top_k(rng, logits: np.ndarray, excluded: np.ndarray, k: int) -> np.ndarray:
    """Per row, k column indices in the order sampled from softmax(logits) without replacement."""
    with np.errstate(divide="ignore"):
        perturbed = logits - np.log(-np.log(rng.random(logits.shape, dtype=np.float32)))
    perturbed[excluded] = -np.inf
    k = min(k, logits.shape[1])
    if k < logits.shape[1]:
        top = np.argpartition(-perturbed, k - 1, axis=1)[:, :k]
    else:
        top = np.broadcast_to(np.arange(k), perturbed.shape)
    order = np.argsort(-np.take_along_axis(perturbed, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def _log(rng, picks: dict, lengths: np.ndarray, start_time: int) -> pd.DataFrame:
    """The log in time order, with strictly increasing timestamps per user and 1-5 ratings."""
    n_users = len(lengths)
    user = np.repeat(np.arange(n_users), lengths)
    # Gaps between a user's interactions: lognormal around six hours, at least one second.
    gaps = 1 + np.floor(np.exp(rng.normal(np.log(6 * 3600), 1.5, size=len(user)))).astype(np.int64)
    starts = start_time + rng.integers(365 * DAY, size=n_users)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    gaps[first] = 0
    elapsed = np.cumsum(gaps)
    timestamp = starts[user] + elapsed - np.repeat(elapsed[first], lengths)
    affinity = picks["affinity"].astype(np.float64)
    standard = (affinity - affinity.mean()) / (affinity.std() or 1.0)
    rating = np.clip(np.rint(3.0 + 1.1 * standard + rng.normal(scale=0.6, size=len(user))), 1, 5)
    order = np.lexsort((np.arange(len(user)), timestamp))
    user_ids, item_ids = _ids(n_users), _ids(int(picks["items"].max()) + 1)
    return pd.DataFrame({
        "user_id": pd.Series(user_ids[user[order]], dtype=str),
        "item_id": pd.Series(item_ids[picks["items"][order]], dtype=str),
        "timestamp": timestamp[order],
        "rating": rating[order],
    })
