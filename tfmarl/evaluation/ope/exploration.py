"""Closed-form slate probabilities of ε-per-slot exploration around a greedy slate.

The exploration law (that of `tfmarl.rl.QSlatePolicy`): from a greedy slate g of K distinct
items among N candidates, each slot is independently swapped with probability ε; the kept slots
keep g_k, and the swapped slots, in slot order, receive the first items of a uniformly random
ordering of the free candidates F = candidates − {g_j : slot j kept} (|F| = N − K + |swapped|),
so a swapped slot may get its own greedy item back. Both the logging side (behaviour
propensities of simulated logs) and the target side (the adapter) use these formulas.
"""

from __future__ import annotations

import functools
import math

import numpy as np

_ROW_CHUNK = 2048


def _check(epsilon: float, k: int, num_candidates: int) -> None:
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
    if num_candidates < k:
        raise ValueError(f"{num_candidates} candidates cannot fill a slate of {k}")


def _inverse_free_size(num_candidates: int, k: int, others: int, fixed: int, epsilon: float) -> float:
    """E[1 / (N − K + fixed + X)], X ~ Binomial(others, ε) swapped slots among ``others``."""
    return sum(math.comb(others, x) * epsilon ** x * (1 - epsilon) ** (others - x) / (num_candidates - k + fixed + x)
               for x in range(others + 1))


def epsilon_slot_marginals(items: np.ndarray, greedy: np.ndarray, candidates: np.ndarray,
                           epsilon: float) -> np.ndarray:
    """P(item ``items[i, k, s]`` appears at position k), float64 [n, K, S].

    Args:
      items: int [n, K, S], items asked about at each position.
      greedy: int [n, K], the greedy slate (items).
      candidates: int [n, N], the candidate items (the greedy slate among them).
    """
    n, k = greedy.shape
    num_candidates = candidates.shape[1]
    _check(epsilon, k, num_candidates)
    own = (1 - epsilon) + epsilon * _inverse_free_size(num_candidates, k, k - 1, 1, epsilon)
    other_greedy = epsilon ** 2 * _inverse_free_size(num_candidates, k, k - 2, 2, epsilon) if k > 1 else 0.0
    free = epsilon * _inverse_free_size(num_candidates, k, k - 1, 1, epsilon)
    is_greedy_at = items[:, :, :, None] == greedy[:, None, None, :]           # [n, K, S, K]
    same_slot = is_greedy_at[:, np.arange(k), :, np.arange(k)].transpose(1, 0, 2)  # [n, K, S]
    any_greedy = is_greedy_at.any(axis=-1)
    in_candidates = (items[..., None] == candidates[:, None, None, :]).any(axis=-1)
    return np.where(same_slot, own, np.where(any_greedy, other_greedy, np.where(in_candidates, free, 0.0)))


@functools.lru_cache(maxsize=64)
def _prefix_table(num_candidates: int, k: int, epsilon: float) -> np.ndarray:
    """P(a prefix) by its counts, float64 [K + 1, K + 1, K + 1] indexed (prefix length, forced
    swaps in the prefix, forced swaps after it): the sum over how many of the unforced slots are
    swapped, inside the prefix (x_p) and after it (x_a)."""
    table = np.zeros((k + 1, k + 1, k + 1))
    for length in range(1, k + 1):
        for fp in range(length + 1):
            for fa in range(k - length + 1):
                up, ua, total = length - fp, k - length - fa, 0.0
                for xp in range(up + 1):
                    for xa in range(ua + 1):
                        swapped = fp + xp + fa + xa
                        free = num_candidates - k + swapped
                        draws = fp + xp
                        total += (math.comb(up, xp) * math.comb(ua, xa) * epsilon ** swapped
                                  * (1 - epsilon) ** (k - swapped) / math.prod(range(free - draws + 1, free + 1)))
                table[length, fp, fa] = total
    return table


def epsilon_slot_cascade(slates: np.ndarray, greedy: np.ndarray, candidates: np.ndarray,
                         epsilon: float) -> np.ndarray:
    """P(the slate's top k is (s_1..s_k)) for k = 1..K, float64 [n, K] (last column: the slate's).

    A prefix of length k pins down which slots must be swapped: the prefix slots whose item is
    not their greedy one (f_p of them), and the later slots whose greedy item appears in the
    prefix (f_a); every other slot is swapped or kept freely. Summing over how many of those are
    swapped (ε^|S| (1−ε)^(K−|S|), and 1 / (|F|)_m for the m ordered draws the prefix's swapped
    slots make from F) gives a function of (k, f_p, f_a) alone, tabulated once per (N, K, ε).
    A prefix holding an item outside the candidates has probability 0.
    """
    n, k = slates.shape
    num_candidates = candidates.shape[1]
    _check(epsilon, k, num_candidates)
    table = _prefix_table(int(num_candidates), int(k), float(epsilon))
    out = np.empty((n, k))
    lengths = np.arange(1, k + 1)
    for start in range(0, n, _ROW_CHUNK):
        s, g, c = (a[start:start + _ROW_CHUNK] for a in (slates, greedy, candidates))
        forced_prefix = np.cumsum(s != g, axis=1)                                    # [b, k]
        where = s[:, :, None] == g[:, None, :]                                        # [b, t, j]
        position = np.where(where.any(axis=1), where.argmax(axis=1), k)               # slot of g_j in s, or K
        in_prefix = position[:, None, :] < lengths[None, :, None]                     # [b, length, j]
        after = np.arange(k)[None, None, :] >= lengths[None, :, None]
        forced_after = np.sum(in_prefix & after, axis=2)                              # [b, k]
        valid = np.cumprod((s[:, :, None] == c[:, None, :]).any(axis=-1), axis=1).astype(bool)
        out[start:start + len(s)] = np.where(valid, table[lengths[None, :], forced_prefix, forced_after], 0.0)
    return out
