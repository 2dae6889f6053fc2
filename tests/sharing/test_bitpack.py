"""Bit packing: the exact little-endian bit stream, round trips, and refusal of bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlactor.sharing.bitpack import pack_bits, packed_size, unpack_bits
from dlactor.wire.errors import RemoteProtocolError

SIZES = [0, 1, 7, 8, 9, 1001]


def _reference_pack(values: np.ndarray, bits: int) -> np.ndarray:
    """The specification, one bit at a time: bit j of value i is stream bit i * bits + j."""
    stream = [(int(v) >> j) & 1 for v in values for j in range(bits)]
    return np.packbits(np.array(stream, dtype=np.uint8), bitorder="little")


def _codes(bits: int, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1 << bits, count).astype(np.uint8)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", SIZES)
def test_round_trip_is_exact_and_the_size_is_minimal(bits: int, count: int) -> None:
    values = _codes(bits, count, seed=bits * 100 + count)
    packed = pack_bits(values, bits)
    assert packed.dtype == np.uint8
    assert packed.size == packed_size(count, bits) == -(-count * bits // 8)
    out = unpack_bits(packed, bits, count)
    assert out.dtype == np.uint8 and out.shape == (count,)
    assert np.array_equal(out, values)


@pytest.mark.parametrize("bits", range(1, 9))
def test_packed_bytes_are_the_little_endian_bit_stream(bits: int) -> None:
    values = _codes(bits, 37, seed=bits)
    assert np.array_equal(pack_bits(values, bits), _reference_pack(values, bits))


def test_a_known_packing() -> None:
    # 2-bit codes 1, 2, 3 -> bits 10 01 11 (LSB first) -> 0b00111001
    assert pack_bits(np.array([1, 2, 3], dtype=np.uint8), 2).tolist() == [0b00111001]
    # 3-bit codes 7, 7, 7 span two bytes: 9 ones, then zero padding
    assert pack_bits(np.full(3, 7, dtype=np.uint8), 3).tolist() == [0xFF, 0x01]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 8).flatmap(
        lambda b: st.tuples(st.just(b), st.lists(st.integers(0, (1 << b) - 1), max_size=70))
    )
)
def test_round_trip_any_codes(case: tuple[int, list[int]]) -> None:
    bits, codes = case
    values = np.array(codes, dtype=np.uint8)
    packed = pack_bits(values, bits)
    assert np.array_equal(packed, _reference_pack(values, bits))
    assert np.array_equal(unpack_bits(packed, bits, len(codes)), values)


def test_pack_does_not_alias_its_input() -> None:
    values = _codes(8, 16)
    packed = pack_bits(values, 8)
    packed[0] ^= 1
    assert packed[0] != values[0]


@pytest.mark.parametrize("bits", [0, 9, -1, True, 2.0])
def test_bad_bits_are_the_callers_bug(bits: object) -> None:
    with pytest.raises(ValueError, match="bits"):
        pack_bits(np.zeros(4, dtype=np.uint8), bits)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bits"):
        unpack_bits(np.zeros(4, dtype=np.uint8), bits, 4)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", range(1, 8))
def test_values_out_of_range_are_refused(bits: int) -> None:
    values = np.zeros(9, dtype=np.uint8)
    values[5] = 1 << bits
    with pytest.raises(ValueError, match="value"):
        pack_bits(values, bits)


@pytest.mark.parametrize(
    "values",
    [np.zeros(4, dtype=np.int64), np.zeros((2, 2), dtype=np.uint8), [0, 1]],
    ids=["int64", "2-D", "list"],
)
def test_values_must_be_a_1d_uint8_array(values: object) -> None:
    with pytest.raises(ValueError, match="1-D uint8"):
        pack_bits(values, 4)  # type: ignore[arg-type]


def test_a_negative_count_is_the_callers_bug() -> None:
    with pytest.raises(ValueError, match="count"):
        unpack_bits(np.zeros(0, dtype=np.uint8), 4, -1)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("delta", [-1, 1])
def test_packed_of_the_wrong_length_is_the_peers_fault(bits: int, delta: int) -> None:
    packed = pack_bits(_codes(bits, 9), bits)
    wrong = np.zeros(packed.size + delta, dtype=np.uint8)
    with pytest.raises(RemoteProtocolError, match="bytes"):
        unpack_bits(wrong, bits, 9)


@pytest.mark.parametrize("bits", range(1, 8))
def test_set_padding_bits_are_the_peers_fault(bits: int) -> None:
    count = 9  # 9 * bits is never a multiple of 8 for bits < 8
    packed = pack_bits(_codes(bits, count), bits)
    used = count * bits % 8
    for bit in range(used, 8):
        hostile = packed.copy()
        hostile[-1] |= 1 << bit
        with pytest.raises(RemoteProtocolError, match="padding"):
            unpack_bits(hostile, bits, count)


@pytest.mark.parametrize(
    "packed",
    [np.zeros(5, dtype=np.int8), np.zeros((5, 1), dtype=np.uint8), b"\0" * 5],
    ids=["int8", "2-D", "bytes"],
)
def test_packed_must_be_a_1d_uint8_array(packed: object) -> None:
    with pytest.raises(RemoteProtocolError, match="1-D uint8"):
        unpack_bits(packed, 4, 9)  # type: ignore[arg-type]
