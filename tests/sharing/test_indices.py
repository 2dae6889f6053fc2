"""Sparse index sets: exact recovery, the smaller encoding chosen, hostile encodings refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlactor.sharing.indices import (
    BITMASK,
    VARINT,
    decode_indices,
    encode_indices,
    encoded_index_size,
)
from dlactor.wire.errors import RemoteProtocolError


def _leb128(values: list[int]) -> np.ndarray:
    """The specification, one value at a time: 7 bits per byte, high bit on all but the last."""
    out: list[int] = []
    for v in values:
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return np.array(out, dtype=np.uint8)


def _varint_of(idx: np.ndarray) -> np.ndarray:
    return _leb128(np.diff(idx, prepend=0).tolist())


def _random_set(n: int, density: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.flatnonzero(rng.random(n) < density).astype(np.int64)


def _check_round_trip(idx: np.ndarray, n: int) -> tuple[str, np.ndarray]:
    kind, data = encode_indices(idx, n)
    assert data.dtype == np.uint8 and data.ndim == 1
    assert encoded_index_size(idx, n) == data.size
    out = decode_indices(kind, data, n, idx.size)
    assert out.dtype == np.int64 and np.array_equal(out, idx)
    return kind, data


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 100, 5000])
@pytest.mark.parametrize("density", [0.0, 0.001, 0.05, 0.3, 1.0])
def test_round_trip_is_exact_and_picks_the_smaller_encoding(n: int, density: float) -> None:
    idx = _random_set(n, density, seed=n)
    kind, data = _check_round_trip(idx, n)
    varint, bitmask = _varint_of(idx), -(-n // 8)
    assert kind == (VARINT if varint.size < bitmask else BITMASK)
    if kind == VARINT:
        assert np.array_equal(data, varint)
    else:
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        assert np.array_equal(data, np.packbits(mask, bitorder="little"))


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 3000).flatmap(
        lambda n: st.tuples(st.just(n), st.sets(st.integers(0, max(n - 1, 0)), max_size=n))
    )
)
def test_round_trip_any_set(case: tuple[int, set[int]]) -> None:
    n, members = case
    idx = np.array(sorted(members), dtype=np.int64)
    kind, data = _check_round_trip(idx, n)
    assert data.size == min(_varint_of(idx).size, -(-n // 8))
    other = BITMASK if kind == VARINT else VARINT  # the other encoding decodes the same
    if other == VARINT:
        other_data = _varint_of(idx)
    else:
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        other_data = np.packbits(mask, bitorder="little")
    assert np.array_equal(decode_indices(other, other_data, n, idx.size), idx)


def test_very_sparse_sets_use_varints() -> None:
    n = 1_000_000
    idx = _random_set(n, 0.001)  # gaps ~1000: 2 bytes each, against 125 for the bitmask
    kind, data = _check_round_trip(idx, n)
    assert kind == VARINT and data.size < 2.1 * idx.size < n // 8


def test_ten_percent_density_costs_about_one_byte_per_index() -> None:
    n = 1_000_000
    idx = _random_set(n, 0.1)
    kind, data = _check_round_trip(idx, n)
    assert kind == VARINT and data.size < 1.01 * idx.size < n // 8


def test_dense_sets_use_the_bitmask() -> None:
    n = 100_000
    idx = _random_set(n, 0.5)
    kind, data = _check_round_trip(idx, n)
    assert kind == BITMASK and data.size == n // 8 < idx.size


def test_a_tie_goes_to_the_bitmask() -> None:
    # n = 16: the bitmask takes 2 bytes; indices 3 and 9 take 2 one-byte varints
    kind, data = _check_round_trip(np.array([3, 9]), 16)
    assert kind == BITMASK and data.size == 2
    kind, _ = _check_round_trip(np.array([3]), 16)
    assert kind == VARINT


def test_multi_byte_varints_up_to_63_bits() -> None:
    n = (1 << 63) - 1
    idx = np.array([0, 127, 128, 16511, 1 << 40, (1 << 62) + 5, n - 1], dtype=np.int64)
    kind, data = _check_round_trip(idx, n)  # the bitmask (2**60 bytes) is never built
    assert kind == VARINT and np.array_equal(data, _varint_of(idx))
    assert encode_indices(np.array([1 << 62]), n)[1].size == 9


def test_other_integer_dtypes_are_accepted() -> None:
    for dtype in (np.int32, np.uint16, np.uint64):
        idx = np.array([1, 5, 300], dtype=dtype)
        kind, data = encode_indices(idx, 1000)
        assert np.array_equal(decode_indices(kind, data, 1000, 3), [1, 5, 300])


@pytest.mark.parametrize(
    ("idx", "match"),
    [
        ([3, 3], "increasing"),
        ([5, 2], "increasing"),
        ([-1, 2], r"\[0, 10\)"),
        ([2, 10], r"\[0, 10\)"),
    ],
)
def test_bad_indices_are_the_callers_bug(idx: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_indices(np.array(idx), 10)
    with pytest.raises(ValueError, match=match):
        encoded_index_size(np.array(idx), 10)


def test_indices_must_be_a_1d_integer_array() -> None:
    for bad in (np.array([1.0, 2.0]), np.array([[1, 2]]), [1, 2]):
        with pytest.raises(ValueError, match="1-D integer"):
            encode_indices(bad, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must"):
        encode_indices(np.array([], dtype=np.int64), -1)


# --- hostile encodings ------------------------------------------------------------------------


def _refused(kind: str, data: list[int] | np.ndarray, n: int, count: int, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode_indices(kind, np.asarray(data, dtype=np.uint8), n, count)


def test_an_unknown_kind_is_refused() -> None:
    _refused("rle", [1, 2], 10, 2, "unknown")
    _refused("", [], 10, 0, "unknown")


def test_data_must_be_a_1d_uint8_array() -> None:
    for bad in (np.array([1, 2], dtype=np.int8), np.array([[1, 2]], dtype=np.uint8), b"\x01"):
        with pytest.raises(RemoteProtocolError, match="1-D uint8"):
            decode_indices(VARINT, bad, 10, 2)  # type: ignore[arg-type]


def test_a_truncated_varint_is_refused() -> None:
    _refused(VARINT, [1, 0x85], 1000, 2, "truncated")
    _refused(VARINT, [0x80], 1000, 1, "truncated")


def test_varints_longer_than_needed_are_refused() -> None:
    ten_bytes = [0x80] * 9 + [0x01]
    _refused(VARINT, ten_bytes, 1 << 62, 1, "cannot hold")  # caught by the total size
    _refused(VARINT, [1, *ten_bytes], 1 << 62, 2, "longer than 9")
    _refused(VARINT, [0x85, 0x00], 1000, 1, "longer than needed")  # 5 as 2 bytes
    _refused(VARINT, [0x80, 0x80, 0x00], 1000, 1, "longer than needed")


def test_an_index_past_n_is_refused() -> None:
    _refused(VARINT, [10], 10, 1, ">= 10")  # the first index
    _refused(VARINT, [4, 6], 10, 2, ">= 10")  # 4 + 6 = 10
    _refused(VARINT, _leb128([1 << 40]), 1000, 1, ">= 1000")


def test_a_sum_that_would_wrap_around_int64_is_refused() -> None:
    n = 1 << 62
    gaps = [n - 1] * 4  # each gap is below n; their sum passes 2**63 and would wrap
    _refused(VARINT, _leb128(gaps), n, 4, ">= ")


def test_repeated_indices_are_refused() -> None:
    _refused(VARINT, [2, 0], 10, 2, "repeat")
    _refused(VARINT, [2, 3, 0, 1], 10, 4, "repeat")


def test_a_count_mismatch_is_refused() -> None:
    _refused(VARINT, [1, 2, 3], 10, 2, "bytes cannot hold|expected 2")
    _refused(VARINT, [0x81, 0x01, 0x81, 0x01], 1000, 3, "expected 3")
    _refused(VARINT, [1, 2], 10, 3, "cannot hold")
    _refused(VARINT, [], 10, 1, "cannot hold")
    _refused(VARINT, [1], 10, 0, "cannot hold")
    _refused(VARINT, [0, 1, 1], 2, 3, "cannot lie")
    _refused(BITMASK, [0b101], 3, 1, "holds 2")
    _refused(BITMASK, [0b101], 3, 3, "holds 2")


def test_a_bitmask_of_the_wrong_length_is_refused() -> None:
    _refused(BITMASK, [0xFF], 9, 8, "takes 2 bytes")
    _refused(BITMASK, [0xFF, 0, 0], 9, 8, "takes 2 bytes")
    _refused(BITMASK, [0], 0, 0, "takes 0 bytes")


def test_bitmask_bits_past_n_are_refused() -> None:
    for bit in range(3, 8):
        _refused(BITMASK, [1 << bit], 3, 1, "past position 3")


def test_empty_sets_decode() -> None:
    assert decode_indices(VARINT, np.zeros(0, np.uint8), 10, 0).size == 0
    assert decode_indices(BITMASK, np.zeros(2, np.uint8), 10, 0).size == 0
    assert decode_indices(BITMASK, np.zeros(0, np.uint8), 0, 0).size == 0


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from([VARINT, BITMASK]),
    data=st.binary(max_size=24),
    n=st.integers(0, 200),
    count=st.integers(0, 30),
)
def test_any_bytes_decode_to_a_valid_set_or_are_refused(
    kind: str, data: bytes, n: int, count: int
) -> None:
    try:
        idx = decode_indices(kind, np.frombuffer(data, dtype=np.uint8), n, count)
    except RemoteProtocolError:
        return
    assert idx.dtype == np.int64 and idx.size == count
    assert idx.size == 0 or (idx[0] >= 0 and idx[-1] < n and bool((np.diff(idx) > 0).all()))
    # what decodes is exactly what the encoder makes for that encoding
    expected = _varint_of(idx) if kind == VARINT else None
    if expected is not None:
        assert data == expected.tobytes()
