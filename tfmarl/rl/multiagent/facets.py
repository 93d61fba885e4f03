"""Interest facets: clusters of the Content agent's item embeddings, grouped into domains."""

from __future__ import annotations

import dataclasses

import numpy as np

from tfmarl.data.vocab import NUM_RESERVED


@dataclasses.dataclass
class Facets:
    """``item_facet`` int32 [num_items] (reserved rows 0), ``centroids`` float32 [F, D] (unit
    norm), ``facet_domain`` int32 [F]: which Content agent owns each facet."""

    item_facet: np.ndarray
    centroids: np.ndarray
    facet_domain: np.ndarray

    @property
    def num_facets(self) -> int:
        return len(self.centroids)

    @property
    def num_domains(self) -> int:
        return int(self.facet_domain.max()) + 1

    def domain_facets(self, domain: int) -> np.ndarray:
        return np.flatnonzero(self.facet_domain == domain).astype(np.int32)


def kmeans(x: np.ndarray, k: int, *, iterations: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (cosine) with k-means++ seeding; returns (labels [n], centroids [k, d])."""
    x = np.asarray(x, np.float64)
    if not 1 <= k <= len(x):
        raise ValueError(f"k must be in [1, {len(x)}], got {k}")
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    centroids = [unit[rng.integers(len(unit))]]
    for _ in range(1, k):
        distance = 1.0 - np.max(unit @ np.array(centroids).T, axis=1)
        p = np.maximum(distance, 0) ** 2
        centroids.append(unit[rng.choice(len(unit), p=p / p.sum()) if p.sum() > 0 else rng.integers(len(unit))])
    centroids = np.array(centroids)
    labels = np.zeros(len(unit), np.int64)
    for _ in range(iterations):
        labels = np.argmax(unit @ centroids.T, axis=1)
        for c in range(k):
            members = unit[labels == c]
            if len(members):
                mean = members.sum(0)
                centroids[c] = mean / max(np.linalg.norm(mean), 1e-12)
    return labels, centroids.astype(np.float32)


def build_facets(item_vectors, num_facets: int = 8, num_domains: int = 2, *, seed: int = 0) -> Facets:
    """Clusters items (rows 2.. of ``item_vectors``, e.g. a pretrained Content agent's catalog)
    into ``num_facets`` facets and the facets into ``num_domains`` domains (one Content agent
    each) by clustering the facet centroids, so each domain is a group of related interests."""
    vectors = np.asarray(item_vectors, np.float32)
    if not 1 <= num_domains <= num_facets:
        raise ValueError(f"need 1 <= num_domains <= num_facets, got {num_domains} and {num_facets}")
    labels, centroids = kmeans(vectors[NUM_RESERVED:], num_facets, seed=seed)
    item_facet = np.zeros(len(vectors), np.int32)
    item_facet[NUM_RESERVED:] = labels
    if num_domains == 1:
        domains = np.zeros(num_facets, np.int32)
    else:
        domains, _ = kmeans(centroids, num_domains, seed=seed)
        # Every domain must own at least one facet.
        for d in range(num_domains):
            if not (domains == d).any():
                domains[np.argmax(np.bincount(domains, minlength=num_domains))] = d
    return Facets(item_facet, centroids, np.asarray(domains, np.int32))
