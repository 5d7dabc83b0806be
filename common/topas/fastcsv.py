"""Fast, exact parsing of the numeric rows of TOPAS scorer CSVs, with numpy alone.

TOPAS writes rows in one strict shape: values separated by ", ", one row per line, each
number as C++ streams print it ("%.16g" style: 1234, -1, 0.001234567890123456,
1.234567890123456e-10, 9e+99). np.loadtxt reads any CSV but converts value by value
through Python's strtod (~200 ns each, 95% of a merge); here whole blocks of rows are
parsed with array operations:

  1. the ',' and '\\n' bytes give every token's start and end; a block whose rows do not
     all have the expected number of values is refused (the caller then uses loadtxt);
  2. each token is split into sign, digits and exponent; the digits are read eight at a
     time from unaligned 64-bit words (SWAR: one word = eight ASCII digits), giving the
     exact integer mantissa m and decimal exponent k of the value m * 10**k;
  3. m * 10**k is rounded to float64: exactly in float64 when m <= 2**53 and |k| <= 22
     (both factors exact, one rounding), otherwise via the 80-bit long double (64-bit
     significand) followed by a check that the second rounding cannot differ from a
     direct one; the few values this cannot decide (and anything unusual: nan, inf,
     subnormals) go through Python's float().

So every value is bit-for-bit what float() gives for its text, about six times faster
than loadtxt. Where long double is not the x87 80-bit type (Windows, macOS on ARM),
`available()` is False and callers use the general parser. Reads files in blocks of rows,
so memory stays proportional to the block and the wanted columns.
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np

_SPACE, _COMMA, _NEWLINE, _CR, _DOT, _MINUS, _PLUS = b" ,\n\r.-+"
_LOWER_E = ord("e")
_CASE_BIT = 0x20  # 'E' | 0x20 == 'e'
_PAD = 32  # zero bytes kept before and after a block, so word reads never leave it
_BLOCK_BYTES = 1 << 20

_U64 = np.uint64
_ASCII_ZEROS = _U64(0x3030303030303030)
_ABOVE_NINE = _U64(0x4646464646464646)  # '9' + 0x46 = 0x7F; ':' and above reach 0x80
_HIGH_BITS = _U64(0x8080808080808080)
# _LAST_BYTES[c]: the bytes of a little-endian word holding its last c characters
_LAST_BYTES = np.array([0] + [((1 << (8 * c)) - 1) << (8 * (8 - c)) for c in range(1, 9)],
                       dtype=_U64)
_POW10_INT = np.array([10 ** p for p in range(20)], dtype=_U64)
_POW10_FLOAT = 10.0 ** np.arange(23)  # all exact in float64
_MAX_EXACT_INT = 2 ** 53
_MAX_EXACT_POW10_LONG = 27  # 5**27 < 2**64: 10**27 is exact in a 64-bit significand
_SMALLEST_NORMAL = np.finfo(np.float64).tiny
_MAX_DIGITS = 24  # digits after the point that are read (TOPAS prints at most 16+4)


def available() -> bool:
    """Whether this machine's long double has the 64-bit significand the rounding needs."""
    return np.finfo(np.longdouble).nmant >= 63


def _long_powers() -> np.ndarray:
    # From text, so each power is the correctly rounded long double (strtold).
    return np.array([np.longdouble(f"1e{p}") for p in range(400)])


_POW10_LONG = _long_powers() if available() else np.ones(1)


class UnreadableNumber(ValueError):
    """A token in a well-formed row that is not a number; `row` counts data rows from 0."""

    def __init__(self, text: str, row: int) -> None:
        super().__init__(f"unreadable number {text!r} in data row {row + 1}")
        self.text = text
        self.row = row


def read_columns(path: Path, offset: int, n_columns: int,
                 wanted: Sequence[int]) -> np.ndarray | None:
    """The `wanted` columns (sorted, 0-based) of the rows after byte `offset`, as a
    (rows, len(wanted)) float64 array; None if the rows are not in TOPAS's strict shape.

    Raises UnreadableNumber for a token no parser could read, OSError if unreadable.
    """
    if not available():
        return None
    parts: list[np.ndarray] = []
    rows_before = 0
    with open(path, "rb") as handle:
        handle.seek(offset)
        for block in _blocks(handle):
            part = _parse_block(block, n_columns, wanted, rows_before)
            if part is None:
                return None
            parts.append(part)
            rows_before += part.shape[0]
    if not parts:
        return np.empty((0, len(wanted)))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _blocks(handle: BinaryIO) -> Iterator[bytearray]:
    """Blocks of whole lines, each ending with '\\n' and padded with zero bytes both sides."""
    tail = b""
    while True:
        chunk = handle.read(_BLOCK_BYTES)
        if not chunk:
            break
        data = tail + chunk
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        if cut:
            yield _padded(data[:cut])
    if tail.strip():
        yield _padded(tail + b"\n")  # a last line without its newline


def _padded(lines: bytes) -> bytearray:
    block = bytearray(_PAD)
    block += lines
    block += bytes(_PAD)
    return block


def _parse_block(block: bytearray, n_columns: int, wanted: Sequence[int],
                 rows_before: int) -> np.ndarray | None:
    buf = np.frombuffer(block, np.uint8)
    begin, end = _PAD, len(block) - _PAD
    separators = _separators(buf[begin:end], n_columns)
    if separators is None:
        return None
    separators += begin
    starts, ends = _token_bounds(buf, separators, begin, wanted)
    words = np.ndarray(shape=(len(buf) - 7,), dtype="<u8", buffer=block, strides=(1,))
    values, undecided = _numbers(buf, words, starts, ends)
    for index in np.flatnonzero(undecided):
        values[index] = _python_float(block, starts[index], ends[index],
                                      rows_before + index // len(wanted))
    return values.reshape(-1, len(wanted))


def _separators(region: np.ndarray, n_columns: int) -> np.ndarray | None:
    """Positions of every ',' and '\\n' as (rows, n_columns), or None if rows differ."""
    found = np.flatnonzero((region == _COMMA) | (region == _NEWLINE))
    if found.size == 0 or found.size % n_columns:
        return None
    grid = found.reshape(-1, n_columns)
    # As many separators as rows * columns, and a newline closes every row: every row
    # holds exactly n_columns values.
    if not (np.all(np.take(region, grid[:, -1]) == _NEWLINE) and
            np.all(np.take(region, grid[:, :-1]) == _COMMA)):
        return None
    return grid


def _token_bounds(buf: np.ndarray, separators: np.ndarray, begin: int,
                  wanted: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of every wanted token, row by row, without ', ' and '\\r'."""
    previous = np.empty_like(separators)
    previous[:, 1:] = separators[:, :-1]
    previous[0, 0] = begin - 1
    previous[1:, 0] = separators[:-1, -1]
    starts = previous[:, wanted].ravel() + 1
    ends = separators[:, wanted].ravel()
    starts += np.take(buf, starts) == _SPACE
    ends -= np.take(buf, ends - 1) == _CR
    return starts, ends


def _python_float(block: bytearray, start: int, end: int, row: int) -> float:
    text = bytes(block[start:end])
    try:
        return float(text)
    except ValueError:
        raise UnreadableNumber(text.decode("ascii", "replace"), row) from None


# ------------------------------------------------------------------ tokens to numbers

def _numbers(buf: np.ndarray, words: np.ndarray, starts: np.ndarray,
             ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each token's float64 value and where it is undecided (to be read by float())."""
    negative = np.take(buf, starts) == _MINUS
    digits_start = starts + negative
    mantissa_end, exponent, exponent_ok = _exponents(buf, ends)
    mantissa, fraction_digits, mantissa_ok = _mantissas(buf, words, digits_start,
                                                        mantissa_end)
    values, undecided = _to_double(mantissa, exponent - fraction_digits)
    undecided |= ~(exponent_ok & mantissa_ok) | (ends <= starts)
    np.negative(values, out=values, where=negative)
    return values, undecided


def _exponents(buf: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                           np.ndarray]:
    """Where each mantissa ends, the decimal exponent, and whether it reads as one.

    C++ prints exponents as e+XX or e-XXX: a sign and two or three digits.
    """
    short = (np.take(buf, ends - 4) | _CASE_BIT) == _LOWER_E
    long = (np.take(buf, ends - 5) | _CASE_BIT) == _LOWER_E
    long &= ~short
    has = short | long
    if not has.any():
        return ends, np.zeros(ends.shape, dtype=np.int64), np.ones(ends.shape, dtype=bool)
    mantissa_end = ends - 4 * short - 5 * long
    sign = np.take(buf, np.where(has, mantissa_end + 1, ends - 1))
    ones, tens, hundreds = (np.take(buf, ends - back).astype(np.int64) - ord("0")
                            for back in (1, 2, 3))
    hundreds *= long
    magnitude = ones + 10 * tens + 100 * hundreds
    digits_ok = ((ones | tens | hundreds) >= 0) & (np.maximum(np.maximum(ones, tens),
                                                              hundreds) <= 9)
    ok = ~has | (digits_ok & ((sign == _PLUS) | (sign == _MINUS)))
    exponent = np.where(sign == _MINUS, -magnitude, magnitude) * has
    return mantissa_end, exponent, ok


def _mantissas(buf: np.ndarray, words: np.ndarray, start: np.ndarray,
               end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digits (one optional '.') of [start, end) as an integer and the digits after '.'.

    Most tokens have their point second ("1.5", "-0.25", "1.2e-08") or none ("42"), so
    that is tried first; tokens that then fail get their point looked up in the block.
    """
    point = np.where(np.take(buf, start + 1) == _DOT, start + 1, end)
    mantissa, fraction, ok = _split_mantissas(words, start, point, end)
    retry = np.flatnonzero(~ok & (point == end))
    if retry.size:
        point[retry] = _find_points(buf, start[retry], end[retry])
        mantissa[retry], fraction[retry], ok[retry] = _split_mantissas(
            words, start[retry], point[retry], end[retry])
    return mantissa, fraction, ok


def _find_points(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The first '.' inside each [start, end), or end where there is none."""
    low, high = int(start.min()), int(end.max())
    points = np.flatnonzero(buf[low:high] == _DOT) + low
    if points.size == 0:
        return end.copy()
    candidate = points[np.minimum(np.searchsorted(points, start), points.size - 1)]
    return np.where((candidate >= start) & (candidate < end), candidate, end)


def _split_mantissas(words: np.ndarray, start: np.ndarray, point: np.ndarray,
                     end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    has_point = point < end
    whole_digits = point - start
    fraction_digits = np.where(has_point, end - point - 1, 0)
    ok = (whole_digits >= 1) & (whole_digits <= 16) & (fraction_digits <= _MAX_DIGITS)
    whole_digits = np.clip(whole_digits, 0, 16)
    fraction_digits = np.clip(fraction_digits, 0, _MAX_DIGITS)
    whole, whole_ok = _digit_runs(words, start, start + whole_digits)
    fraction, fraction_ok = _digit_runs(words, end - fraction_digits, end)
    # whole * 10**fraction_digits + fraction must stay below 2**64.
    scale = np.minimum(fraction_digits, 19)
    fits = (whole == 0) | ((fraction_digits <= 18) &
                           (whole < _POW10_INT[np.maximum(19 - scale, 0)]))
    mantissa = whole * _POW10_INT[scale] + fraction
    return mantissa, fraction_digits.astype(np.int64), ok & whole_ok & fraction_ok & fits


def _digit_runs(words: np.ndarray, start: np.ndarray,
                end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The integer spelled by the digits in each [start, end) and whether all are digits."""
    value = np.zeros(start.shape, dtype=_U64)
    bad = np.zeros(start.shape, dtype=_U64)
    longest = int((end - start).max()) if start.size else 0
    for word in range(-(-longest // 8)):
        last = end - 8 * word
        count = np.clip(last - start, 0, 8)
        keep = _LAST_BYTES[count]
        text = words[last - 8] & keep
        digits = text - (_ASCII_ZEROS & keep)
        bad |= ((text + (_ABOVE_NINE & keep)) | digits) & _HIGH_BITS
        value += _eight_digits(digits) * _POW10_INT[8 * word]
    return value, bad == 0


def _eight_digits(digits: np.ndarray) -> np.ndarray:
    """Eight digit values (first character in the lowest byte) combined to an integer:
    neighbouring bytes, then pairs of bytes, then halves, each as high * 10**n + low."""
    digits = (digits * _U64(10) + (digits >> _U64(8))) & _U64(0x00FF00FF00FF00FF)
    digits = (digits * _U64(100) + (digits >> _U64(16))) & _U64(0x0000FFFF0000FFFF)
    return (digits * _U64(10000) + (digits >> _U64(32))) & _U64(0xFFFFFFFF)


def _to_double(mantissa: np.ndarray, exponent: np.ndarray) -> tuple[np.ndarray,
                                                                    np.ndarray]:
    """mantissa * 10**exponent correctly rounded, and where that could not be decided."""
    values = np.empty(mantissa.shape)
    undecided = np.zeros(mantissa.shape, dtype=bool)
    simple = (mantissa <= _MAX_EXACT_INT) & (np.abs(exponent) <= 22)
    index = np.flatnonzero(simple)
    values[index] = _exact_in_double(mantissa[index], exponent[index])
    index = np.flatnonzero(~simple)
    if index.size:
        values[index], undecided[index] = _via_long_double(mantissa[index], exponent[index])
    return values, undecided


def _exact_in_double(mantissa: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    # Both factors are exact doubles, so one correctly rounded operation (Clinger).
    values = mantissa.astype(np.float64)
    scale = _POW10_FLOAT[np.abs(exponent)]
    up = exponent >= 0
    np.multiply(values, scale, out=values, where=up)
    np.divide(values, scale, out=values, where=~up)
    return values


def _via_long_double(mantissa: np.ndarray, exponent: np.ndarray) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    in_table = np.abs(exponent) < _POW10_LONG.size
    scale = _POW10_LONG[np.where(in_table, np.abs(exponent), 0)]
    wide = mantissa.astype(np.longdouble)
    up = exponent >= 0
    np.multiply(wide, scale, out=wide, where=up)
    np.divide(wide, scale, out=wide, where=~up)
    values = wide.astype(np.float64)
    # Rounding `wide` to double equals rounding the exact value unless `wide` sits on
    # (exact factors: one rounding) or within a long-double unit of (a rounded power
    # of ten: two roundings) a midpoint between two doubles; those go to float().
    half_gap = np.spacing(np.abs(values)) / 2
    rounded_off = np.abs(wide - values.astype(np.longdouble))
    slack = np.where(np.abs(exponent) <= _MAX_EXACT_POW10_LONG, 0.0, half_gap / 2 ** 8)
    # Below a power of two the gap halves, so its midpoint is half as far.
    undecided = ((np.abs(rounded_off - half_gap) <= slack) |
                 (np.abs(rounded_off - half_gap / 2) <= slack))
    undecided |= ~in_table | ~np.isfinite(values)
    undecided |= (np.abs(values) < _SMALLEST_NORMAL) & (mantissa != 0)
    return values, undecided
