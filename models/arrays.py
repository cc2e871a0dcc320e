"""Row-major float64 matrices, as the tree models read them, filled a block of rows at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# Bytes of a block's buffer: small enough to stay in cache whatever the number of columns (a
# fixed 16,384 rows made 52 MB blocks of the 400 propensity features, about 1.4x slower).
BLOCK_BYTES = 4 * 2**20

Column = Callable[[slice], np.ndarray | float]


def row_major(n_rows: int, columns: Sequence[Column], block_rows: int | None = None) -> np.ndarray:
    """(n_rows x len(columns)) C-contiguous float64 matrix whose column j holds
    `columns[j](rows)` at each slice of rows (`block_rows` at a time; default: BLOCK_BYTES).

    Each column is written contiguously into a small buffer and the buffer is transposed into the
    result a block at a time: building a column-major matrix and copying it to row-major order
    (`np.ascontiguousarray`) takes several times longer at millions of rows and holds both copies.
    """
    if block_rows is None:
        block_rows = max(1, BLOCK_BYTES // (8 * max(len(columns), 1)))
    if block_rows < 1:
        raise ValueError(f"block_rows == {block_rows}, must be at least 1.")
    result = np.empty((n_rows, len(columns)), dtype=np.float64)
    buffer = np.empty((len(columns), min(block_rows, n_rows)), dtype=np.float64)
    for start in range(0, n_rows, block_rows):
        rows = slice(start, min(start + block_rows, n_rows))
        size = rows.stop - start
        for index, column in enumerate(columns):
            buffer[index, :size] = column(rows)
        result[rows] = buffer[:, :size].T
    return result
