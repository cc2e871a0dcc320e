"""Row-major matrices filled a block of rows at a time."""

from __future__ import annotations

import numpy as np
import pytest

from models.arrays import BLOCK_BYTES, row_major


def test_every_block_lands_on_its_rows_and_the_matrix_is_row_major():
    first, second = np.arange(7, dtype=np.float64), np.arange(7, dtype=np.float32) * 10
    columns = [lambda part: first[part], lambda part: second[part], lambda part: -1.0]
    matrix = row_major(7, columns, block_rows=3)  # blocks of 3, 3 and 1 rows
    assert matrix.flags.c_contiguous and matrix.dtype == np.float64
    expected = np.column_stack([first, second.astype(np.float64), np.full(7, -1.0)])
    assert np.array_equal(matrix, expected)


def test_wide_matrices_are_filled_in_smaller_blocks_of_rows():
    values = np.arange(2_000 * 600, dtype=np.float64).reshape(600, 2_000)
    columns = [lambda part, row=row: row[part] for row in values]
    assert BLOCK_BYTES // (8 * 600) < 2_000  # the default block holds fewer rows than the matrix
    assert np.array_equal(row_major(2_000, columns), values.T)


def test_no_rows_or_no_columns_give_an_empty_matrix():
    assert row_major(0, [lambda part: 1.0]).shape == (0, 1)
    assert row_major(4, []).shape == (4, 0)


def test_a_block_needs_a_row():
    with pytest.raises(ValueError, match="block_rows == 0, must be at least 1"):
        row_major(3, [lambda part: 1.0], block_rows=0)
