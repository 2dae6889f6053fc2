"""QSGD quantization: unbiased, within one step, exact wire round trip, hostile wire refused."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlactor.sharing.qsgd import (
    CODES,
    LO,
    STEP,
    Quantized,
    dequantize,
    from_wire,
    num_buckets,
    quantize,
    to_wire,
    wire_layout,
)
from dlactor.wire.errors import RemoteProtocolError

SIZES = [0, 1, 7, 8, 9]
BUCKETS = [None, 1, 3, 8]


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """As in a node worker (launcher.torch_threads = 1); also keeps these tests to one core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _steps_per_element(q: Quantized) -> torch.Tensor:
    width = q.bucket_size or max(q.count, 1)
    return q.step.repeat_interleave(width)[: q.count]


def _within_one_step(x: torch.Tensor, q: Quantized) -> bool:
    step = _steps_per_element(q)
    err = (dequantize(q) - x).abs()
    return bool((err <= step * (1 + 1e-5) + 1e-6 * x.abs()).all())


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", SIZES)
@pytest.mark.parametrize("bucket_size", BUCKETS)
def test_round_trip_shapes_and_error_below_one_step(
    bits: int, count: int, bucket_size: int | None
) -> None:
    x = torch.randn(count, generator=_gen(count)) * 3
    q = quantize(x, bits, bucket_size, _gen(1))
    buckets = num_buckets(count, bucket_size)
    assert q.codes.dtype == np.uint8 and q.codes.shape == (count,)
    assert int(q.codes.max(initial=0)) <= (1 << bits) - 1
    assert q.lo.dtype == q.step.dtype == torch.float32
    assert q.lo.shape == q.step.shape == (buckets,)
    assert (q.bits, q.bucket_size, q.count) == (bits, bucket_size, count)
    out = dequantize(q)
    assert out.dtype == torch.float32 and out.shape == (count,)
    assert _within_one_step(x, q)
    # bucket ranges are the real min and max: lo + levels * step is the max
    width = bucket_size or max(count, 1)
    for k in range(buckets):
        chunk = x[k * width : (k + 1) * width]
        assert q.lo[k] == chunk.min()
        assert math.isclose(q.lo[k] + q.levels * q.step[k], chunk.max(), rel_tol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 8),
    count=st.integers(0, 300),
    bucket_size=st.one_of(st.none(), st.integers(1, 64)),
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(1e-30, 1e30),
)
def test_error_is_below_one_step_for_any_vector(
    bits: int, count: int, bucket_size: int | None, seed: int, scale: float
) -> None:
    x = torch.randn(count, generator=_gen(seed)) * scale
    q = quantize(x, bits, bucket_size, _gen(seed + 1))
    assert _within_one_step(x, q)
    back = from_wire(to_wire(q), bits, bucket_size, count)
    assert torch.equal(dequantize(back), dequantize(q))


def _unbiased(x: torch.Tensor, estimates: torch.Tensor, step: torch.Tensor) -> bool:
    """Whether the mean of ``estimates`` (one row per draw) is within 5 standard errors of
    ``x``, using the variance bound step**2 / 4 of each element (plus float rounding)."""
    draws = estimates.shape[0]
    stderr = step / 2 / math.sqrt(draws)
    gap = (estimates.double().mean(0) - x.double()).abs()
    return bool((gap <= 5 * stderr.double() + 1e-6 * (1 + x.double().abs())).all())


DRAWS = 2000


def _test_vector() -> torch.Tensor:
    x = torch.randn(48, generator=_gen(7))
    x[16:32] = x[16:32] * 0.01 + 5  # a bucket with a small, offset range
    return x


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("bucket_size", [16, None])
def test_quantize_is_unbiased(bits: int, bucket_size: int | None) -> None:
    """DRAWS quantizations of x in one call: x repeated DRAWS times, each copy exactly 3
    buckets of 16 (or, with one bucket for all, the same range as x alone)."""
    x = _test_vector()
    q = quantize(x.repeat(DRAWS), bits, bucket_size, _gen(bits))
    step = _steps_per_element(q)[:48]
    if bucket_size is not None:
        assert torch.equal(q.step.view(DRAWS, 3), q.step[:3].expand(DRAWS, 3))
    assert _unbiased(x, dequantize(q).view(DRAWS, 48), step)


def test_quantize_is_unbiased_across_calls_and_in_a_partial_bucket() -> None:
    x = _test_vector()[:40]  # buckets of 16, 16 and 8
    g = _gen(2)
    draws = [quantize(x, 2, 16, g) for _ in range(DRAWS)]
    step = _steps_per_element(draws[0])
    assert _unbiased(x, torch.stack([dequantize(d) for d in draws]), step)


def test_the_unbiasedness_check_catches_rounding_to_nearest() -> None:
    """The check above can fail: deterministic rounding is biased, and it is caught."""
    x = _test_vector()
    q = quantize(x, 3, 16, _gen(0))
    step = _steps_per_element(q)
    lo = q.lo.repeat_interleave(16)
    nearest = lo + torch.round((x - lo) / step) * step
    assert not _unbiased(x, nearest.expand(DRAWS, 48), step)


def test_quantize_is_reproducible_from_the_generator_seed() -> None:
    x = torch.randn(100, generator=_gen(3))
    a, b = quantize(x, 2, 10, _gen(5)), quantize(x, 2, 10, _gen(5))
    c = quantize(x, 2, 10, _gen(6))
    assert np.array_equal(a.codes, b.codes)
    assert not np.array_equal(a.codes, c.codes)


@pytest.mark.parametrize("bits", range(1, 9))
def test_constant_buckets_have_step_zero_codes_zero_and_are_exact(bits: int) -> None:
    x = torch.cat([torch.full((8,), 2.5), torch.randn(8, generator=_gen(0)), torch.zeros(3)])
    q = quantize(x, bits, 8, _gen(1))
    assert q.step[0] == 0 and q.step[2] == 0 and q.step[1] > 0
    assert not q.codes[:8].any() and not q.codes[16:].any()
    assert torch.equal(dequantize(q)[:8], x[:8]) and torch.equal(dequantize(q)[16:], x[16:])


def test_any_shape_is_read_flattened() -> None:
    x = torch.randn(3, 5, generator=_gen(0), dtype=torch.float64)
    q = quantize(x, 4, 4, _gen(1))
    assert q.count == 15 and _within_one_step(x.reshape(-1).float(), q)


def test_bad_parameters_and_non_finite_input_are_the_callers_bug() -> None:
    x = torch.ones(4)
    for bits in (0, 9):
        with pytest.raises(ValueError, match="bits"):
            quantize(x, bits, None, _gen())
    with pytest.raises(ValueError, match="bucket_size"):
        quantize(x, 4, 0, _gen())
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="non-finite"):
            quantize(torch.tensor([0.0, bad, 1.0]), 4, None, _gen())
    with pytest.raises(ValueError, match="non-finite"):  # max - min overflows float32
        quantize(torch.tensor([-3e38, 3e38]), 1, None, _gen())


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", SIZES)
def test_wire_round_trip_is_exact(bits: int, count: int) -> None:
    x = torch.randn(count, generator=_gen(count))
    q = quantize(x, bits, 4, _gen(2))
    wire = to_wire(q)
    layout = wire_layout(bits, 4, count)
    assert {k: (t.dtype, tuple(t.shape)) for k, t in wire.items()} == layout
    assert wire[CODES].numel() == -(-count * bits // 8)  # b/8 bytes per element
    back = from_wire(wire, bits, 4, count)
    assert np.array_equal(back.codes, q.codes)
    assert torch.equal(back.lo, q.lo) and torch.equal(back.step, q.step)
    assert torch.equal(dequantize(back), dequantize(q))


def _wire(bits: int = 3, count: int = 9) -> dict[str, torch.Tensor]:
    return to_wire(quantize(torch.randn(count, generator=_gen(0)), bits, 4, _gen(1)))


def _refused(tensors: dict[str, torch.Tensor], match: str, bits: int = 3, count: int = 9) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        from_wire(tensors, bits, 4, count)


@pytest.mark.parametrize("name", [CODES, LO, STEP])
def test_from_wire_refuses_a_missing_tensor(name: str) -> None:
    wire = _wire()
    del wire[name]
    _refused(wire, "no tensor")


@pytest.mark.parametrize(
    ("name", "dtype"),
    [(CODES, torch.int8), (CODES, torch.float32), (LO, torch.float64), (STEP, torch.float16)],
)
def test_from_wire_refuses_a_wrong_dtype(name: str, dtype: torch.dtype) -> None:
    wire = _wire()
    wire[name] = wire[name].to(dtype)
    _refused(wire, "expected")


@pytest.mark.parametrize("name", [CODES, LO, STEP])
def test_from_wire_refuses_a_wrong_shape(name: str) -> None:
    for bad in (lambda t: t[:-1], lambda t: torch.cat([t, t[:1]]), lambda t: t.reshape(1, -1)):
        wire = _wire()
        wire[name] = bad(wire[name])
        _refused(wire, "expected")


def test_from_wire_refuses_another_number_of_buckets() -> None:
    # lo and step of one bucket too few or too many, consistently: the count says 3 buckets
    for buckets in (2, 4):
        wire = _wire()
        wire[LO], wire[STEP] = torch.zeros(buckets), torch.ones(buckets)
        _refused(wire, "expected")


@pytest.mark.parametrize("name", [LO, STEP])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_from_wire_refuses_non_finite_lo_or_step(name: str, bad: float) -> None:
    wire = _wire()
    wire[name] = wire[name].clone()
    wire[name][1] = bad
    _refused(wire, "not finite")


def test_from_wire_refuses_a_negative_step() -> None:
    wire = _wire()
    wire[STEP] = wire[STEP].clone()
    wire[STEP][2] = -0.5
    _refused(wire, "negative")


def test_from_wire_refuses_a_range_that_overflows_float32() -> None:
    wire = _wire()
    wire[LO] = torch.full((3,), 3e38)
    wire[STEP] = torch.full((3,), 1e38)  # finite, but lo + 7 * step is not
    _refused(wire, "not finite")


def test_from_wire_refuses_set_padding_bits() -> None:
    wire = _wire(bits=3, count=9)  # 27 bits: the last byte has 5 padding bits
    codes = wire[CODES].clone()
    codes[-1] |= 0x80
    wire[CODES] = codes
    _refused(wire, "padding")


def test_from_wire_ignores_other_tensors_and_parameters_are_ours() -> None:
    wire = _wire()
    wire["indices"] = torch.arange(3)
    assert from_wire(wire, 3, 4, 9).count == 9
    with pytest.raises(ValueError, match="bits"):
        from_wire(wire, 0, 4, 9)
    with pytest.raises(ValueError, match="count"):
        from_wire(wire, 3, 4, -1)


def test_quantized_checks_its_own_consistency() -> None:
    with pytest.raises(ValueError, match="codes"):
        Quantized(np.zeros(3, np.int64), torch.zeros(1), torch.zeros(1), 2, None, 3)
    with pytest.raises(ValueError, match="lo"):
        Quantized(np.zeros(3, np.uint8), torch.zeros(2), torch.zeros(1), 2, None, 3)
