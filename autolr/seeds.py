"""The seeds a study trains with: the search's, and the confirmation's fresh ones, kept apart.

A study seeded ``s`` trains every search trial on ``s`` (the same initial weights, the same batches),
or, with ``train.seed_per_trial``, trial ``n`` on ``trial_seed(s, n)``: ``s + n`` for the first
thousand trials, skipping every multiple of :data:`SEED_STRIDE` after, so that no search trial ever
trains on a confirmation's fresh seed ``s + k * SEED_STRIDE`` (k >= 1). Imports nothing.
"""

from __future__ import annotations

__all__ = ["SEED_STRIDE", "fresh_seed", "trial_seed"]

SEED_STRIDE = 1_000  # fresh seed k of a study seeded s is s + k * SEED_STRIDE: far from any search seed


def fresh_seed(seed: int, k: int) -> int:
    """The confirmation's ``k``-th fresh seed (k >= 1) of a study seeded ``seed``."""
    return seed + k * SEED_STRIDE


def trial_seed(seed: int, number: int) -> int:
    """The seed of search trial ``number`` with a seed per trial: ``seed + number``, the offsets that
    are multiples of SEED_STRIDE (the fresh seeds') skipped."""
    if number <= 0:
        return seed
    return seed + number + (number - 1) // (SEED_STRIDE - 1)
