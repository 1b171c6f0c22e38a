"""`audit`'s one-pass scan finds exactly the rows a search per row finds."""

import numpy as np
from hypothesis import given, settings, strategies as st

from sisa.auditing import RowScanner


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31), length=st.sampled_from([3, 100, 127, 128, 129, 784, 3000]),
       k=st.integers(1, 12), zeros=st.floats(0, 0.95), planted=st.integers(0, 6), size=st.integers(0, 40_000))
def test_finds_what_a_search_per_row_finds(seed, length, k, zeros, planted, size):
    """Rows with runs of zeros (crowded blocks), rows sharing bytes, files holding some rows at
    any offset, whole or only a prefix of one, among zero bytes: same answer as `in`."""
    rng = np.random.default_rng(seed)

    def noise(n):
        b = rng.integers(0, 256, n, dtype=np.uint8)
        b[rng.random(n) < zeros] = 0
        return b.tobytes()

    rows = {int(i): noise(length) for i in rng.choice(10**6, k, replace=False)}
    if k > 1:  # two rows sharing a prefix
        a, b = list(rows)[:2]
        rows[b] = rows[a][: length // 2] + rows[b][length // 2 :]
    data = bytearray(noise(size))
    for _ in range(planted):
        row = rows[list(rows)[rng.integers(k)]]
        at = int(rng.integers(0, len(data) + 1))
        cut = row[: rng.integers(1, len(row) + 1)] if rng.random() < 0.3 else row  # a partial copy is no hit
        data[at:at] = cut
    data = bytes(data)
    assert RowScanner(rows).found(data) == sorted(i for i, row in rows.items() if row in data)


def test_index_is_bounded_and_crowded_rows_are_searched(monkeypatch):
    rng = np.random.default_rng(0)
    rows = {i: rng.integers(0, 256, 784, dtype=np.uint8).tobytes() for i in range(20)}
    rows[99] = bytes(784)  # all zeros: every block crowded
    scanner = RowScanner(rows)
    assert scanner.searched == [99]
    with monkeypatch.context() as m:
        m.setattr(RowScanner, "MAX_ENTRIES", 393 * 5)
        assert len(RowScanner(rows).searched) == 16  # 5 of 20 indexed (and the zero row searched)
    data = b"x" * 1000 + rows[7] + bytes(5000) + rows[99]
    assert scanner.found(data) == [7, 99]
