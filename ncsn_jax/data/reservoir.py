"""A uniform random sample of fixed size from a stream of unknown length (reservoir sampling)."""
from __future__ import annotations

import numpy as np


class Reservoir:
    """Keeps a uniform random sample of `size` rows of everything passed to `update`.

    Algorithm R: the first `size` rows are kept; row n (counting from 0) then replaces a random kept row
    with probability size/(n + 1). Memory is `size` rows, whatever the stream's length, and the sample
    does not depend on how the stream is cut into batches.

    Args:
      size: rows to keep.
      rng: the generator of the replacement draws (seed it for a reproducible sample).
    """

    def __init__(self, size: int, rng: np.random.Generator):
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self._size, self._rng, self._seen = size, rng, 0
        self._rows: np.ndarray | None = None

    @property
    def seen(self) -> int:
        """Rows passed to `update` so far."""
        return self._seen

    def update(self, rows: np.ndarray) -> None:
        """Offers every row (along the first axis) of `rows` to the sample."""
        rows = np.asarray(rows, np.float32)
        if self._rows is None:
            self._rows = np.empty((self._size, *rows.shape[1:]), np.float32)
        for row in rows:
            if self._seen < self._size:
                self._rows[self._seen] = row
            else:
                slot = self._rng.integers(0, self._seen + 1)
                if slot < self._size:
                    self._rows[slot] = row
            self._seen += 1

    def sample(self) -> np.ndarray:
        """The kept rows: all of them while fewer than `size` were seen."""
        if self._rows is None:
            return np.empty((0,), np.float32)
        return self._rows[: min(self._seen, self._size)]
