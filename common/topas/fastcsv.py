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

So every value is bit-for-bit what float() gives for its text, three times faster than
np.loadtxt when every column is wanted and five when, as in a merge, only some are.
Where long double has no 64-bit significand (Windows, macOS on ARM),
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
_BLOCK_BYTES = 512 << 10  # fits the temporaries in a core's cache (measured: 256K-1M best)

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
_U8_ZERO = np.uint8(ord("0"))


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


def read_columns(path: Path, offset: int, n_columns: int, wanted: Sequence[int],
                 constant: Sequence[int] = (), rows: int | None = None) -> np.ndarray | None:
    """The `wanted` columns (sorted, 0-based) of the rows after byte `offset`, as a
    (rows, len(wanted)) float64 array; None if the rows are not in TOPAS's strict shape.

    `constant`: wanted columns expected to hold one number in every row (TOPAS's
    Histories_with_Scorer_Active); where their text is the same throughout a block only
    its first row is parsed. `rows`: how many rows to expect (a hint: the result is
    filled in place instead of joined from blocks, which would need twice the memory).
    Raises UnreadableNumber for a token no parser could read, OSError if unreadable.
    """
    if not available():
        return None
    table = _Table(len(wanted), rows)
    same = [position for position, column in enumerate(wanted) if column in constant]
    with open(path, "rb") as handle:
        handle.seek(offset)
        for block, end in _blocks(handle):
            part = _parse_block(block, end, n_columns, wanted, same, table.rows)
            if part is None:
                return None
            table.append(part)
    return table.result()


class _Table:
    """Rows parsed block by block, written into one array when their number is known."""

    def __init__(self, columns: int, expected: int | None) -> None:
        self.rows = 0
        self._filled = np.empty((expected or 0, columns))
        self._parts: list[np.ndarray] = []

    def append(self, part: np.ndarray) -> None:
        stop = self.rows + part.shape[0]
        if not self._parts and stop <= self._filled.shape[0]:
            self._filled[self.rows:stop] = part
        else:  # more rows than expected: collect, join at the end
            if not self._parts:
                self._parts.append(self._filled[:self.rows])
            self._parts.append(part)
        self.rows = stop

    def result(self) -> np.ndarray:
        if self._parts:
            return np.concatenate(self._parts)
        return self._filled[:self.rows]


def _blocks(handle: BinaryIO) -> Iterator[tuple[bytearray, int]]:
    """(buffer, end): whole lines in buffer[_PAD:end], the last ending with '\\n', with
    at least _PAD bytes before and after. One buffer serves every block (no copies), so
    each block must be used up before the next is asked for."""
    buffer = bytearray(_PAD + _BLOCK_BYTES + _PAD)
    kept = 0  # an unfinished last line, moved to the front
    while True:
        start = _PAD + kept
        count = handle.readinto(memoryview(buffer)[start:len(buffer) - _PAD])
        filled = start + count
        if count == 0:
            break
        end = buffer.rfind(b"\n", _PAD, filled) + 1
        if end == 0:  # a line longer than the buffer: make room and read on
            kept = filled - _PAD
            buffer.extend(bytes(len(buffer)))
            continue
        yield buffer, end
        kept = filled - end
        buffer[_PAD:_PAD + kept] = buffer[end:filled]
    if kept and bytes(buffer[_PAD:_PAD + kept]).strip():  # a last line without '\\n'
        buffer[_PAD + kept:_PAD + kept + 1] = b"\n"
        yield buffer, _PAD + kept + 1


def _parse_block(block: bytearray, end: int, n_columns: int, wanted: Sequence[int],
                 same: Sequence[int], rows_before: int) -> np.ndarray | None:
    """The wanted values of the rows in block[_PAD:end]; None if not in the strict shape."""
    buf = np.frombuffer(block, np.uint8)
    begin = _PAD
    separators = _separators(buf[begin:end], n_columns)
    if separators is None:
        return None
    separators += begin
    starts, ends = _token_bounds(buf, separators, begin, wanted)
    words = np.ndarray(shape=(len(buf) - 7,), dtype="<u8", buffer=block, strides=(1,))
    values = np.empty(starts.shape)
    parse = list(range(len(wanted)))
    for position in same:
        if _all_alike(words, starts[:, position], ends[:, position]):
            parse.remove(position)
            values[:, position] = _values(block, buf, words, starts[:1, position],
                                          ends[:1, position], rows_before, 1)[0]
    if parse:
        values[:, parse] = _values(block, buf, words, starts[:, parse].ravel(),
                                   ends[:, parse].ravel(), rows_before,
                                   len(parse)).reshape(-1, len(parse))
    return values


def _values(block: bytearray, buf: np.ndarray, words: np.ndarray, starts: np.ndarray,
            ends: np.ndarray, rows_before: int, per_row: int) -> np.ndarray:
    """The tokens' values; float() decides those the array arithmetic cannot."""
    values, undecided = _numbers(buf, words, starts, ends)
    for index in np.flatnonzero(undecided):
        values[index] = _python_float(block, starts[index], ends[index],
                                      rows_before + index // per_row)
    return values


def _all_alike(words: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> bool:
    """Whether every token [start, end) has the same text (of at most 24 characters)."""
    length = ends - starts
    first = int(length[0])
    if not 1 <= first <= _MAX_DIGITS or not np.all(length == first):
        return False
    for word in range(-(-first // 8)):
        text = words[ends - 8 * (word + 1)] & _LAST_BYTES[min(first - 8 * word, 8)]
        if not np.all(text == text[0]):
            return False
    return True


def _separators(region: np.ndarray, n_columns: int) -> np.ndarray | None:
    """Positions of every ',' and '\\n' as (rows, n_columns), or None if rows differ."""
    found = np.flatnonzero((region == _COMMA) | (region == _NEWLINE))
    if found.size == 0 or found.size % n_columns:
        return None
    grid = found.reshape(-1, n_columns)
    # A newline closes every row of n_columns separators and there are no others: every
    # row holds exactly n_columns values.
    if not (np.all(np.take(region, grid[:, -1]) == _NEWLINE) and
            np.count_nonzero(region == _NEWLINE) == grid.shape[0]):
        return None
    return grid


def _token_bounds(buf: np.ndarray, separators: np.ndarray, begin: int,
                  wanted: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of every wanted token, (rows, wanted), without ', ' and '\\r'."""
    rows, n_columns = separators.shape
    flat = separators.ravel()
    before = np.empty(flat.size + 1, dtype=np.int64)  # the separator before each token
    before[0] = begin - 1
    before[1:] = flat
    index = np.arange(0, rows * n_columns, n_columns)[:, None] + np.asarray(wanted)
    starts = np.take(before, index)
    starts += 1
    ends = np.take(flat, index)
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
    """Each token's float64 value and where it is undecided (to be read by float()).

    Integers of up to eight digits (bin indices, counts, histories, and the many "0"s
    of unhit bins) take one word each; only the other tokens go the whole way.
    """
    negative = np.take(buf, starts) == _MINUS
    start = starts + negative
    length = ends - start
    small, ok = _eight_chars(words, ends, np.minimum(np.maximum(length, 0), 8))
    ok &= (length >= 1) & (length <= 8)
    values = small.astype(np.float64)
    undecided = np.zeros(starts.shape, dtype=bool)
    rest = np.flatnonzero(~ok)
    if rest.size:
        values[rest], undecided[rest] = _general_numbers(buf, words, start[rest], ends[rest])
    np.negative(values, out=values, where=negative)
    return values, undecided


def _general_numbers(buf: np.ndarray, words: np.ndarray, start: np.ndarray,
                     ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values of tokens with a point or an exponent (or long), signs already removed."""
    mantissa_end, exponent, ok = _exponents(buf, ends)
    mantissa, fraction_digits, mantissa_ok = _mantissas(buf, words, start, mantissa_end)
    exponent -= fraction_digits
    values, undecided = _to_double(mantissa, exponent)
    undecided |= ~(ok & mantissa_ok) | (mantissa_end <= start)
    return values, undecided


def _exponents(buf: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                           np.ndarray]:
    """Where each mantissa ends, the decimal exponent, and whether it reads as one.

    C++ prints exponents as e+XX or e-XXX: a sign and two or three digits, so the last
    five characters tell: [e][sign][d][d][d] or [?][e][sign][d][d].
    """
    fifth, fourth, third, second, last = (np.take(buf, ends - back)
                                          for back in (5, 4, 3, 2, 1))
    long = (fifth | _CASE_BIT) == _LOWER_E
    short = (fourth | _CASE_BIT) == _LOWER_E
    long &= ~short
    has = long | short
    if not has.any():
        return ends, np.zeros(ends.shape, dtype=np.int64), np.ones(ends.shape, dtype=bool)
    sign = np.where(long, fourth, third)
    hundreds = (third - _U8_ZERO) * long  # uint8 wraps below '0': one test per digit
    tens = second - _U8_ZERO
    ones = last - _U8_ZERO
    ok = (np.maximum(np.maximum(hundreds, tens), ones) <= 9)
    ok &= (sign == _PLUS) | (sign == _MINUS)
    ok |= ~has
    exponent = hundreds.astype(np.int64) * 100
    exponent += tens * 10
    exponent += ones
    exponent *= np.where(sign == _MINUS, -1, 1) * has
    return ends - has * (4 + long), exponent, ok


def _mantissas(buf: np.ndarray, words: np.ndarray, start: np.ndarray,
               end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The digits of each [start, end) (one optional '.') as an integer, the number of
    digits after the '.', and whether the text was digits and at most one '.'.

    Three shapes cover nearly all tokens: a point second ("1.5", "1.2e-08", "0.0012"),
    no point ("42", "-1"), and the rest ("12.5"), which needs the point looked up.
    """
    second = np.take(buf, start + 1) == _DOT
    if second.all():  # the usual case: every number printed as d.ddd or d.ddde-XX
        return _one_digit_point(buf, words, start, end)
    mantissa = np.zeros(start.shape, dtype=_U64)
    fraction_digits = np.zeros(start.shape, dtype=np.int64)
    ok = np.zeros(start.shape, dtype=bool)
    index = np.flatnonzero(second)
    mantissa[index], fraction_digits[index], ok[index] = _one_digit_point(
        buf, words, start[index], end[index])
    index = np.flatnonzero(~second)
    mantissa[index], ok[index] = _digit_runs(words, start[index], end[index])
    index = index[~ok[index]]
    if index.size:
        mantissa[index], fraction_digits[index], ok[index] = _any_point(
            buf, words, start[index], end[index])
    return mantissa, fraction_digits, ok


def _one_digit_point(buf: np.ndarray, words: np.ndarray, start: np.ndarray,
                     end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    whole = np.take(buf, start).astype(_U64) - _U64(ord("0"))
    fraction_digits = end - start - 2
    fraction, ok = _digit_runs(words, start + 2, end)
    return _join(whole, fraction, fraction_digits, ok & (whole <= 9))


def _any_point(buf: np.ndarray, words: np.ndarray, start: np.ndarray,
               end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    point = _find_points(buf, start, end)
    whole, whole_ok = _digit_runs(words, start, point)
    fraction_digits = np.maximum(end - point - 1, 0)
    fraction, fraction_ok = _digit_runs(words, end - fraction_digits, end)
    return _join(whole, fraction, fraction_digits, whole_ok & fraction_ok & (point > start))


def _join(whole: np.ndarray, fraction: np.ndarray, fraction_digits: np.ndarray,
          ok: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """whole * 10**fraction_digits + fraction, refused where that would pass 2**64."""
    scale = np.minimum(fraction_digits, 19)
    ok &= (whole == 0) | ((fraction_digits <= 18) &
                          (whole < _POW10_INT[np.maximum(19 - scale, 0)]))
    return whole * _POW10_INT[scale] + fraction, fraction_digits, ok


def _find_points(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The first '.' inside each [start, end), or end where there is none."""
    low, high = int(start.min()), int(end.max())
    points = np.flatnonzero(buf[low:high] == _DOT) + low
    if points.size == 0:
        return end.copy()
    candidate = points[np.minimum(np.searchsorted(points, start), points.size - 1)]
    return np.where((candidate >= start) & (candidate < end), candidate, end)


def _digit_runs(words: np.ndarray, start: np.ndarray,
                end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The integer spelled by each [start, end) and whether it is 1 to 24 digits.

    Reads eight characters at a time, right to left, from words ending at `end`; bytes
    before `start` are masked off. Later words are read only for the runs that need them.
    """
    length = end - start
    ok = (length >= 1) & (length <= _MAX_DIGITS)
    value, good = _eight_chars(words, end, np.minimum(np.maximum(length, 0), 8))
    ok &= good
    for word in (1, 2):
        need = length > 8 * word
        if need.all():
            more, good = _eight_chars(words, end - 8 * word,
                                      np.minimum(length - 8 * word, 8))
            value += more * _POW10_INT[8 * word]
            ok &= good
        elif need.any():
            index = np.flatnonzero(need)
            more, good = _eight_chars(words, end[index] - 8 * word,
                                      np.minimum(length[index] - 8 * word, 8))
            value[index] += more * _POW10_INT[8 * word]
            ok[index] &= good
        else:
            break
    return value, ok


def _eight_chars(words: np.ndarray, last: np.ndarray,
                 count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The last `count` characters before each `last` as an integer, and whether all
    are digits. A word holds eight characters, the first in its lowest byte."""
    keep = np.take(_LAST_BYTES, count)
    text = words[last - 8]
    text &= keep
    zeros = keep & _ASCII_ZEROS
    check = keep & _ABOVE_NINE
    check += text
    text -= zeros  # the digit values; a byte below '0' borrows and sets a high bit
    check |= text
    check &= _HIGH_BITS
    return _eight_digits(text), check == 0


def _eight_digits(digits: np.ndarray) -> np.ndarray:
    """Eight digit values (first character in the lowest byte) combined to an integer:
    neighbouring bytes, then pairs of bytes, then halves, each as high * 10**n + low."""
    for shift, scale, mask in _SWAR_STEPS:
        high = digits * scale
        digits >>= shift
        digits += high
        digits &= mask
    return digits


_SWAR_STEPS = ((_U64(8), _U64(10), _U64(0x00FF00FF00FF00FF)),
               (_U64(16), _U64(100), _U64(0x0000FFFF0000FFFF)),
               (_U64(32), _U64(10000), _U64(0xFFFFFFFF)))


def _to_double(mantissa: np.ndarray, exponent: np.ndarray) -> tuple[np.ndarray,
                                                                    np.ndarray]:
    """mantissa * 10**exponent correctly rounded, and where that could not be decided."""
    simple = (mantissa <= _MAX_EXACT_INT) & (np.abs(exponent) <= 22)
    if simple.all():
        return _exact_in_double(mantissa, exponent), np.zeros(mantissa.shape, dtype=bool)
    if not simple.any():
        return _via_long_double(mantissa, exponent)
    values = np.empty(mantissa.shape)
    undecided = np.zeros(mantissa.shape, dtype=bool)
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
    with np.errstate(over="ignore"):  # inf for values beyond double's range: undecided
        half_gap = np.spacing(np.abs(values)) / 2
    rounded_off = np.abs(wide - values.astype(np.longdouble))
    slack = np.where(np.abs(exponent) <= _MAX_EXACT_POW10_LONG, 0.0, half_gap / 2 ** 8)
    # Below a power of two the gap halves, so its midpoint is half as far.
    undecided = ((np.abs(rounded_off - half_gap) <= slack) |
                 (np.abs(rounded_off - half_gap / 2) <= slack))
    undecided |= ~in_table | ~np.isfinite(values)
    undecided |= (np.abs(values) < _SMALLEST_NORMAL) & (mantissa != 0)
    return values, undecided
