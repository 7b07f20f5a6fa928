"""Exact discrete noise: the discrete Laplace and the discrete Gaussian, vectorised.

Every sampler here turns uniform random bits into integers with **exactly** the target
distribution, using only integer comparisons between the bits and exactly known thresholds:
no floating-point operation sits between the bits and the noisy integer (the attacks on
floating-point noise of Mironov, CCS 2012, and Jin et al., S&P 2022, have nothing to act
on). Where a threshold is enclosed in float64 to decide most comparisons at once (the
discrete Gaussian's acceptance coin), the enclosure is certified and every comparison it
cannot decide falls back to the exact one, so each outcome is the exact outcome. The
thresholds are the real numbers ``2**31 * P(X >= m)``; they are transcendental
(values of ``exp`` at non-zero rationals, by Lindemann-Weierstrass), so they are known only
as enclosures, computed with :mod:`decimal`, whose ``exp`` is documented as correctly
rounded (the General Decimal Arithmetic specification), widened by one unit in the last
place, then combined by interval arithmetic with directed rounding.

How a sample is drawn (inverse transform sampling with lazy bits). A 31-bit word ``R`` is
the first 31 bits of a uniform real ``U`` in [0, 1): ``U * 2**31`` is in ``[R, R + 1)``.
``X >= m`` iff ``U < P(X >= m)``. With ``t_m = floor(2**31 P(X >= m))``: ``R < t_m``
proves ``U < P`` and ``R > t_m`` proves ``U >= P``; only ``R == t_m`` (probability
``2**-31`` per draw) leaves the comparison open, and then the element draws 64 more
bits of ``U`` at a time and compares against enclosures at that precision until it is
decided (:class:`_LazyUniform`, in Python, per element: about once in 2 * 10**9
draws). The result is exactly ``#{m : U < P(X >= m)}``, whose law is that of ``X``.

Large scales (Section 5 of Canonne, Kamath & Steinke 2020 decompose differently; this
decomposition is the classical one): a geometric ``G`` with ``P(G = g) = (1 - r) r**g``
splits as ``G = K * G' + L`` with ``L`` in ``[0, K)`` and ``G'`` independent, ``G'``
geometric with ``r**K`` and ``L`` truncated geometric (``P(L = l)`` proportional to ``r**l``):
``(1 - r) r**(K g' + l) = [(1 - r**K) (r**K)**g'] * [(1 - r) r**l / (1 - r**K)]``. Each
level is one table of at most a few thousand thresholds and one 64-bit word per sample, so
tables stay small at every scale (four levels at scale 1e12).

Randomness comes from a :class:`BitSource`: :class:`SystemBits` reads the operating
system's CSPRNG (``os.urandom``) in large blocks; :class:`SeededBits` is for tests only.

Timing side channel (as OpenDP documents for its samplers): the work per call depends only
on the number of values and the scale, plus random rejection rounds (discrete Gaussian) and
the rare lazy-bit refinements, whose number is random and independent of the data. The
values being noised never choose a branch. Callers add the noise to every value at once.

References:

* C. L. Canonne, G. Kamath, T. Steinke, "The Discrete Gaussian for Differential Privacy",
  NeurIPS 2020 (arXiv:2004.00010): Algorithm 3 (discrete Gaussian by rejection from the
  discrete Laplace), Algorithm 2 (the discrete Laplace as a signed geometric).
* OpenDP, ``sample_discrete_laplace`` / ``sample_discrete_gaussian`` / ``sample_bernoulli_exp``
  (rust/src/traits/samplers): the same distributions, scalar and with big rationals; our
  reference in the tests.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import (
    MAX_EMAX,
    MIN_EMIN,
    ROUND_CEILING,
    ROUND_FLOOR,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    Inexact,
)
from fractions import Fraction
from functools import lru_cache
from typing import Protocol

import numpy as np
import numpy.typing as npt

from telemagg.errors import TelemaggError

U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

WORD_BITS = 31
"""Bits of each 32-bit word compared with a threshold (the 32nd is the sign, or unused).
Ties (probability 2**-31 per draw) are rare enough for the exact lazy path, and half
words halve the entropy drawn from the operating system, the sampler's bottleneck."""
_ONE = np.uint32(1)
_NEVER = np.uint32(2**32 - 1)  # an "ambiguous" marker no 31-bit word can equal
_LEVEL_SIZE = 4096  # K: values per level of the decomposition of large scales
_MAX_TABLE = 8192  # longest untruncated table before the scale is decomposed
_GUIDE_BITS = 14  # cells of the guide table (Chen & Asau 1974): top bits of R
_GUIDE_SHIFT = np.uint32(WORD_BITS - _GUIDE_BITS)
_CELL_SHIFT = np.uint32(32 - _GUIDE_BITS)  # a word's cell: the top bits of its R
_CHUNK = 1 << 15  # values drawn per pass, so that every temporary stays in cache
_DIGITS = 40  # decimal digits of table enclosures (133 bits, far beyond the 31 compared)
# exponents as wide as Decimal allows: exp(-x) of huge x stays a (tiny) number, not 0
_EXACT = Context(prec=10_000, traps=[Inexact], Emin=MIN_EMIN, Emax=MAX_EMAX)  # exact products


# --------------------------------------------------------------------------- bit sources


class BitSource(Protocol):
    """Uniform random 64-bit words."""

    seeded: bool

    def words(self, n: int) -> U64:
        """``n`` independent uniform 64-bit words."""
        ...


def half_words(source: BitSource, n: int) -> U32:
    """``n`` independent uniform 32-bit words (halves of 64-bit words)."""
    return source.words((n + 1) // 2).view(np.uint32)[:n]


class SystemBits:
    """The operating system's CSPRNG (``getrandom``/``/dev/urandom`` via ``os.urandom``),
    read in blocks of up to 1 MiB. Cannot be seeded: the only source of real releases.

    >>> SystemBits().words(3).dtype
    dtype('uint64')
    """

    seeded = False
    _BLOCK = 1 << 20

    def words(self, n: int) -> U64:
        out = np.empty(n, dtype=np.uint64)
        raw = out.view(np.uint8)
        for start in range(0, raw.size, self._BLOCK):
            chunk = os.urandom(min(self._BLOCK, raw.size - start))
            raw[start : start + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        return out

    def __repr__(self) -> str:
        return "SystemBits()"


class SeededBits:
    """Reproducible words from an explicit seed (PCG64). Tests only: not cryptographic.

    >>> SeededBits(1).words(2).tolist() == SeededBits(1).words(2).tolist()
    True
    """

    seeded = True

    def __init__(self, seed: int) -> None:
        self._bits = np.random.PCG64(seed)

    def words(self, n: int) -> U64:
        return np.asarray(self._bits.random_raw(n), dtype=np.uint64).reshape(n)

    def __repr__(self) -> str:
        return "SeededBits(<seed>)"


# --------------------------------------------------------------------------- exact numbers


def dyadic_below(x: Fraction) -> Fraction:
    """The largest float64 not above ``x`` (> 0), as an exact fraction (a dyadic rational).

    Scales are rounded through this so that every exponent the samplers need is a dyadic
    rational, hence an exact :class:`~decimal.Decimal`.

    >>> dyadic_below(Fraction(1, 3)) <= Fraction(1, 3)
    True
    """
    f = float(x)
    if Fraction(f) > x:
        f = math.nextafter(f, 0.0)
    if not (f > 0.0 and math.isfinite(f)):
        raise TelemaggError(f"internal: no positive float below {x}")
    return Fraction(f)


def _decimal(x: Fraction) -> Decimal:
    """A dyadic rational as an exact Decimal."""
    if x.denominator & (x.denominator - 1):
        raise TelemaggError(f"internal: {x} is not dyadic")
    return _EXACT.divide(Decimal(x.numerator), Decimal(x.denominator))


def _contexts(digits: int) -> tuple[Context, Context]:
    return (
        Context(prec=digits, rounding=ROUND_FLOOR, Emin=MIN_EMIN, Emax=MAX_EMAX),
        Context(prec=digits, rounding=ROUND_CEILING, Emin=MIN_EMIN, Emax=MAX_EMAX),
    )


def _exp_neg(x: Decimal, digits: int) -> tuple[Decimal, Decimal]:
    """An enclosure ``lo <= exp(-x) <= hi`` of width about ``2 * 10**-digits`` relative.

    ``Decimal.exp`` is correctly rounded (within half a unit in the last place), so one
    whole unit either side encloses the true value.
    """
    if x == 0:
        return Decimal(1), Decimal(1)
    cap = Decimal(10 * digits + 1000)
    if x > cap:
        # exp(-x) < exp(-cap) < 10**-(4 digits + 434): the enclosure (0, exp(-cap)) is far
        # narrower, in absolute terms, than any 2**-bits a caller compares at these digits
        # (digits >= 0.3 bits). Computing exp(-x) itself would underflow even Decimal's
        # widest range for x > ~2.3e18 (sigma = 1e-9: gamma ~ 1e19), giving 0 and an
        # enclosure that never narrows.
        return Decimal(0), _exp_neg(cap, digits)[1]
    value = Context(prec=digits, rounding=ROUND_HALF_EVEN, Emin=MIN_EMIN, Emax=MAX_EMAX).exp(-x)
    ulp = Decimal((0, (1,), value.adjusted() - digits + 1))
    down, up = _contexts(digits + 2)
    return down.subtract(value, ulp), up.add(value, ulp)


def _scaled(lo: Decimal, hi: Decimal, bits: int) -> tuple[int, int]:
    """``(floor(lo * 2**bits), ceil(hi * 2**bits))``, exactly."""
    power = Decimal(2**bits)
    digits = len(str(2**bits)) + max(len(lo.as_tuple().digits), len(hi.as_tuple().digits)) + 2
    down, up = _contexts(digits)
    low = down.multiply(lo, power).to_integral_value(rounding=ROUND_FLOOR)
    high = up.multiply(hi, power).to_integral_value(rounding=ROUND_CEILING)
    return int(low), int(high)


class _LazyUniform:
    """A uniform real in [0, 1) of which only the first ``bits`` bits are drawn so far.

    :meth:`less` decides ``U < P`` for a real ``P`` known by enclosures at any precision,
    drawing 64 more bits of ``U`` whenever the bits so far leave it open. It terminates with
    probability 1 when ``P`` is irrational (each round leaves it open with probability
    about ``2**-64``) or when the enclosures become exact.
    """

    def __init__(self, word: int, source: BitSource, bits: int = WORD_BITS) -> None:
        self.value, self.bits, self._source = word, bits, source

    def less(self, enclosure: Callable[[int], tuple[int, int]]) -> bool:
        while True:
            low, high = enclosure(self.bits)  # floor(lo 2^bits) <= P 2^bits <= high
            if self.value + 1 <= low:  # U 2^bits < value + 1 <= P 2^bits
                return True
            if self.value >= high:  # P 2^bits <= high <= value <= U 2^bits
                return False
            self.value = (self.value << 64) | int(self._source.words(1)[0])
            self.bits += 64


def _digits_for(bits: int) -> int:
    return int(bits * 0.302) + 20


# --------------------------------------------------------------------------- threshold tables


@dataclass(frozen=True)
class _Level:
    """One inverse-CDF table: ``P(X >= m)`` for ``m = 1, 2, ...`` of one of four laws.

    ``magnitude``: ``|Z|`` of a discrete Laplace with ``r = exp(-q)``: ``P(0) = (1-r)/(1+r)``
    and ``P(|Z| >= m) = 2 r**m / (1 + r)``; truncated at ``size`` K it is the law of
    ``min(|Z|, 1 + (|Z| - 1) mod K)``: ``P(X >= m) = 2 r**m (1 - r**(K+1-m)) / ((1 + r)
    (1 - r**K))`` for ``1 <= m <= K``. ``geometric``: ``P(X >= m) = r**m``, truncated to
    ``[0, K)``: ``r**m (1 - r**(K-m)) / (1 - r**K)``.
    """

    kind: str  # "magnitude" or "geometric"
    q: Decimal  # r = exp(-q), q an exact dyadic rational
    size: int | None  # truncation K, None for untruncated
    thresholds: U32 = field(repr=False)  # t[i] = floor(2^31 P(X >= i + 1)), then 0
    ambiguous: U32 = field(repr=False)  # t[i] where P 2^31 is not an integer, else _NEVER
    ascending: U32 = field(repr=False)  # thresholds reversed, for searchsorted
    guide: I64 = field(repr=False)  # per cell: thresholds above the whole cell; -1: wide

    @property
    def last(self) -> int:
        """Largest value of a truncated level (``K`` for a magnitude, ``K - 1`` otherwise)."""
        assert self.size is not None
        return self.size if self.kind == "magnitude" else self.size - 1

    def enclosure(self, m: int, digits: int) -> tuple[Decimal, Decimal]:
        """``lo <= P(X >= m) <= hi``, computed directly at ``digits`` digits (any ``m``)."""
        if m <= 0:
            return Decimal(1), Decimal(1)
        if self.size is not None and m > self.last:
            return Decimal(0), Decimal(0)

        def power(j: int) -> tuple[Decimal, Decimal]:
            return _exp_neg(_EXACT.multiply(self.q, Decimal(j)), digits)

        return self.combine(m, power, digits)

    def combine(
        self, m: int, power: Callable[[int], tuple[Decimal, Decimal]], digits: int
    ) -> tuple[Decimal, Decimal]:
        """P(X >= m) from enclosures ``power(j)`` of ``r**j``, by interval arithmetic over
        positive factors (see the class docstring), rounding outwards."""
        down, up = _contexts(digits)
        lo, hi = power(m)
        if self.kind == "magnitude":
            r_lo, r_hi = power(1)
            lo = down.divide(down.multiply(2, lo), up.add(1, r_hi))
            hi = up.divide(up.multiply(2, hi), down.add(1, r_lo))
        if self.size is not None:  # times (1 - r**(E - m)) / (1 - r**K)
            end = self.size + 1 if self.kind == "magnitude" else self.size
            tail_lo, tail_hi = power(end - m)
            k_lo, k_hi = power(self.size)
            lo = down.divide(down.multiply(lo, down.subtract(1, tail_hi)), up.subtract(1, k_lo))
            hi = up.divide(up.multiply(hi, up.subtract(1, tail_lo)), down.subtract(1, k_hi))
        return lo, hi


_FIXED = 192  # bits of the fixed-point enclosures tables are built with


def _table_enclosures(kind: str, q: Decimal, size: int | None) -> list[tuple[int, int]] | None:
    """Enclosures ``lo <= 2**_FIXED P(X >= m) <= hi`` for m = 1.., in integer fixed point:
    interval powers of r (floor for lower bounds, ceiling for upper ones), then the
    level's formula (see :class:`_Level`) with the same outward rounding. An untruncated
    table ends at the first m whose upper bound is below 2**-31 (None past
    ``_MAX_TABLE``)."""
    one = 1 << _FIXED
    r_lo, r_hi = _scaled(*_exp_neg(q, _DIGITS + 20), _FIXED)
    lows, highs = [one], [one]

    def extend(j: int) -> None:
        while len(lows) <= j:
            lows.append(lows[-1] * r_lo >> _FIXED)
            highs.append(-(-highs[-1] * r_hi >> _FIXED))

    count = size + 1 if size is not None else _MAX_TABLE + 1
    extend(count if size is not None else 1)
    last = (size if kind == "magnitude" else size - 1) if size is not None else count
    end = (size + 1 if kind == "magnitude" else size) if size is not None else 0
    tiny = one >> WORD_BITS
    out = []
    for m in range(1, last + 1):
        extend(m)
        lo, hi = lows[m], highs[m]
        if kind == "magnitude":  # 2 r^m / (1 + r)
            lo = (2 * lo << _FIXED) // (one + highs[1])
            hi = -(-(2 * hi << _FIXED) // (one + lows[1]))
        if size is not None:  # (1 - r^(E - m)) / (1 - r^K)
            lo = lo * (one - highs[end - m]) // (one - lows[size])
            hi = -(-hi * (one - lows[end - m]) // (one - highs[size]))
        out.append((lo, hi))
        if size is None and hi < tiny:
            return out
    return None if size is None else out


_EMPTY_TABLE = (
    np.zeros(1, np.uint32),
    np.zeros(1, np.uint32),
    np.zeros(1, np.uint32),
    np.zeros(1, np.int64),
)


def _build_level(kind: str, q: Decimal, size: int | None) -> _Level | None:
    """The level's threshold table, guide and ambiguity markers (None: table too long)."""
    enclosures = _table_enclosures(kind, q, size)
    if enclosures is None:
        return None
    probe = _Level(kind, q, size, *_EMPTY_TABLE)
    shift = _FIXED - WORD_BITS
    thresholds = []
    for m, (lo, hi) in enumerate(enclosures, start=1):
        low, high = lo >> shift, -(-hi >> shift)
        digits = _DIGITS
        while high - low > 1:  # the enclosure straddles an integer: sharpen it
            digits *= 2
            low, high = _scaled(*probe.enclosure(m, digits), WORD_BITS)
        # P 2^31 is irrational (Lindemann-Weierstrass), so low < P 2^31 < low + 1
        thresholds.append(low)
    table = np.asarray([*thresholds, 0], dtype=np.uint32)
    if np.any(np.diff(table.astype(object)) > 0):  # P(X >= m) decreases in m
        raise TelemaggError("internal: thresholds not monotone")
    ambiguous = table.copy()
    ambiguous[-1] = _NEVER  # the appended 0 is P = 0 exactly (or past the end): decided
    ascending = table[::-1].copy()
    cells = np.arange(2**_GUIDE_BITS, dtype=np.uint32)
    low_edge = cells << _GUIDE_SHIFT
    high_edge = (cells + _ONE) << _GUIDE_SHIFT
    n = table.size
    above = n - np.searchsorted(ascending, high_edge, side="left")  # t >= cell's end
    touching = n - np.searchsorted(ascending, low_edge, side="left")  # t >= cell's start
    # A cell is "wide" when more than one threshold lies in [start, end): those draws take
    # a binary search. Otherwise the only threshold a word of the cell can tie with is
    # thresholds[above], the one compared.
    guide = np.where(touching - above >= 2, -1, above).astype(np.int64)
    return _Level(kind, q, size, table, ambiguous, ascending, guide)


def _draw(level: _Level, words: U32, source: BitSource) -> I64:
    """``#{m : U < P(X >= m)}`` per word (``U``'s first 31 bits are ``words >> 1``)."""
    r = words >> _ONE
    m: I64 = level.guide[words >> _CELL_SHIFT]
    t = level.thresholds[m]  # m = -1 (wide cell) reads the final 0: no step, no tie
    ties = r == t
    m += r < t
    wide = np.flatnonzero(m < 0)
    if wide.size:  # cells holding several thresholds (far tails): binary search
        m[wide] = level.thresholds.size - np.searchsorted(level.ascending, r[wide], side="right")
        ties[wide] = r[wide] == level.ambiguous[m[wide]]
    if ties.any():  # about 2^-31 per draw: decide with more bits
        for i in np.flatnonzero(ties).tolist():
            m[i] = _resolve(level, int(r[i]), int(m[i]), source)
    return m


def _resolve(level: _Level, word: int, known: int, source: BitSource) -> int:
    """The exact value when the 31 bits tie with a threshold: more bits, sharper bounds."""
    uniform = _LazyUniform(word, source)
    m = known  # U < P(X >= j) holds for every j <= known
    while True:
        candidate = m + 1

        def enclosure(bits: int, candidate: int = candidate) -> tuple[int, int]:
            return _scaled(*level.enclosure(candidate, _digits_for(bits)), bits)

        if not uniform.less(enclosure):
            return m
        m = candidate


@lru_cache(maxsize=256)
def _laplace_levels(rate: Fraction) -> tuple[_Level, ...]:
    """Tables for ``|Z|`` of the discrete Laplace with ``P(z)`` proportional to
    ``exp(-rate |z|)``: one untruncated table when it is short enough, else a truncated
    magnitude level and geometric levels for ``r**K``, ``r**(K**2)``, ... up to one short
    untruncated table."""
    q = _decimal(rate)
    single = _build_level("magnitude", q, None)
    if single is not None:
        return (single,)
    top = _build_level("magnitude", q, _LEVEL_SIZE)
    assert top is not None
    levels = [top]
    power = q
    while True:
        power = _EXACT.multiply(power, Decimal(_LEVEL_SIZE))
        last = _build_level("geometric", power, None)
        if last is not None:
            return (*levels, last)
        middle = _build_level("geometric", power, _LEVEL_SIZE)
        assert middle is not None
        levels.append(middle)


# --------------------------------------------------------------------------- samplers


def laplace_rate(scale: float) -> Fraction:
    """The exact rate (1 / scale) the discrete Laplace sampler uses for a float ``scale``:
    the largest float64 not above ``1 / scale``, so the noise is never narrower than asked.

    >>> laplace_rate(2.0)
    Fraction(1, 2)
    """
    return dyadic_below(1 / Fraction(scale))


def discrete_laplace(n: int, scale: float, source: BitSource) -> I64:
    """``n`` draws of the discrete Laplace: ``P(z)`` proportional to ``exp(-|z| / b)``, with
    ``1 / b`` exactly :func:`laplace_rate` of ``scale`` (``b >= scale`` by at most one
    float64 step).

    Algorithm: the sign is one bit; the magnitude is inverse-transform sampled from the
    exact thresholds of ``P(|Z| >= m) = 2 r**m / (1 + r)``, ``r = exp(-1 / b)`` (module
    docstring: lazy bits decide ties exactly), through the decomposition ``|Z| = 1 + L +
    K G'`` for large scales. Exactness: each output is a deterministic function of the
    uniform ``U`` (and its sign bit) that maps ``U`` to the ``m`` with ``P(|Z| > m) <= U <
    P(|Z| >= m)``; the law of ``m`` is that of ``|Z|``, and ``P(|Z| = 0)`` takes no sign,
    so ``P(z) = P(|Z| = |z|) / 2`` for ``z != 0``, the two-sided geometric
    (CKS 2020, Section 4.1; OpenDP ``sample_discrete_laplace``).

    >>> discrete_laplace(4, 1e-9, SeededBits(0)).tolist()
    [0, 0, 0, 0]
    """
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return _signed_magnitudes(_laplace_levels(laplace_rate(scale)), n, source)


def _signed_magnitudes(levels: tuple[_Level, ...], n: int, source: BitSource) -> I64:
    """Signed draws in chunks of ``_CHUNK``, so that temporaries stay in the CPU cache."""
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, _CHUNK):
        size = min(_CHUNK, n - start)
        out[start : start + size] = _signed_chunk(levels, size, source)
    return out


def _signed_chunk(levels: tuple[_Level, ...], n: int, source: BitSource) -> I64:
    first = half_words(source, n)
    magnitude = _draw(levels[0], first, source)
    if len(levels) > 1:
        geometric = _draw(levels[-1], half_words(source, n), source)
        for level in reversed(levels[1:-1]):
            geometric = _draw(level, half_words(source, n), source) + _LEVEL_SIZE * geometric
        if np.any(geometric > (2**62 - 2 * _LEVEL_SIZE) // _LEVEL_SIZE):
            raise TelemaggError("discrete noise exceeds the int64 range (probability ~0)")
        magnitude = np.where(magnitude == 0, 0, magnitude + _LEVEL_SIZE * geometric)
    elif np.any(magnitude > 2**62):
        raise TelemaggError("discrete noise exceeds the int64 range (probability ~0)")
    # the sign is the word's lowest bit: x -> (x ^ -s) + s negates exactly when s = 1
    sign = (first & _ONE).astype(np.int64)
    np.bitwise_xor(magnitude, -sign, out=magnitude)
    magnitude += sign
    return magnitude


@dataclass(frozen=True)
class _GaussianPlan:
    """Exact parameters of CKS Algorithm 3 for one ``sigma`` (see :func:`discrete_gaussian`)."""

    weight: Fraction  # nu = 1 / (2 sigma'^2), a float64 <= 1 / (2 sigma^2)
    centre: Fraction  # c = sigma'^2 / t, a float64
    rate: Fraction  # 1 / t = 2 nu c (exact)
    cache: dict[int, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def sigma(self) -> float:
        """sigma' (>= the requested sigma)."""
        return math.sqrt(1 / (2 * self.weight))

    def exponent(self, y: int) -> Decimal:
        """gamma(y) = nu (|y| - c)**2, exactly."""
        d = _EXACT.subtract(Decimal(y), _decimal(self.centre))
        return _EXACT.multiply(_decimal(self.weight), _EXACT.multiply(d, d))

    def decide(self, magnitudes: I64, words: U32) -> tuple[BoolArray, BoolArray]:
        """``(accept, open)`` per draw: ``R < 2**31 exp(-gamma(|Y|))`` where a float64
        enclosure of the threshold proves it either way, ``open`` where it does not.

        Certified, not approximate. ``nu`` and ``c`` are exact float64 (dyadic) and ``|Y|``
        converts with relative error ``2**-53`` (exactly below ``2**53``); each of the
        three operations after it rounds by at most ``2**-53`` relative, so
        ``|gamma_float - gamma| <= nu (2 |d| e + e**2) + gamma 2**-50`` with ``d = |Y| - c``
        and ``e`` the error of ``d`` (bounded per draw below). ``exp`` then errs by its
        few ulps: the enclosure is widened by ``expm1`` of that bound plus ``1e-9``
        relative (a million ulps) and ``1e-300`` absolute. ``R + 1 <= low`` proves
        ``U 2**31 < threshold`` and ``R >= high`` the opposite, so every decided draw is
        decided exactly as with the exact threshold; the others (about ``5 * 2**-31`` of
        the draws) take the exact path.
        """
        y = magnitudes.astype(np.float64)
        d = y - float(self.centre)
        e = np.where(magnitudes < 2**53, 0.0, y * 2.0**-52) + np.abs(d) * 2.0**-52
        gamma = float(self.weight) * (d * d)
        error = float(self.weight) * (2.0 * np.abs(d) + e) * e + gamma * 2.0**-50
        threshold = np.exp(-gamma) * float(2**WORD_BITS)
        margin = threshold * (np.expm1(np.minimum(error, 700.0)) + 1e-9) + 1e-300
        r = words.astype(np.float64)
        accept = r + 1.0 <= threshold - margin
        return accept, ~accept & (r < threshold + margin)

    def exact_decision(self, y: int, word: int, source: BitSource) -> bool:
        """``U < exp(-gamma(y))`` for the uniform whose first 31 bits are ``word``, with
        exact thresholds (cached per magnitude) and lazy bits on a tie."""
        found = self.cache.get(y)
        if found is None:
            found = self.cache[y] = self._threshold(y)
            if len(self.cache) > 100_000:  # bound memory on huge sigmas
                self.cache.clear()
        t, amb = found
        if word != amb:
            return word < t
        gamma = self.exponent(y)

        def enclosure(bits: int) -> tuple[int, int]:
            return _scaled(*_exp_neg(gamma, _digits_for(bits)), bits)

        return _LazyUniform(word, source).less(enclosure)

    def _threshold(self, y: int) -> tuple[int, int]:
        gamma = self.exponent(y)
        if gamma == 0:  # exp(0) = 1: always accept, exactly
            return 2**WORD_BITS, int(_NEVER)
        digits = 30
        while True:
            low, high = _scaled(*_exp_neg(gamma, digits), WORD_BITS)
            if high - low <= 1:  # exp(-gamma) is irrational: low < P 2^31 < low + 1
                return low, low
            digits *= 2


@lru_cache(maxsize=64)
def _gaussian_plan(sigma: float) -> _GaussianPlan:
    s = Fraction(sigma)
    weight = dyadic_below(1 / (2 * s * s))
    variance = 1 / (2 * weight)  # sigma'^2 >= sigma^2
    centre = dyadic_below(variance / (math.floor(sigma) + 1))
    return _GaussianPlan(weight, centre, 2 * weight * centre)


def discrete_gaussian(n: int, sigma: float, source: BitSource) -> I64:
    """``n`` draws of the discrete Gaussian: ``P(z)`` proportional to
    ``exp(-z**2 / (2 sigma'**2))``, ``sigma' >= sigma`` (``1 / (2 sigma'**2)`` is the largest
    float64 not above ``1 / (2 sigma**2)``).

    Algorithm 3 of Canonne, Kamath & Steinke (NeurIPS 2020): draw ``Y`` from the discrete
    Laplace with rate ``1 / t``, accept with probability ``exp(-(|Y| - sigma'**2 / t)**2 /
    (2 sigma'**2))``, else retry. Exactness: ``P(Y = y) * accept(y)`` is proportional to
    ``exp(-|y| / t - (|y| - c)**2 nu)`` with ``c = sigma'**2 / t``, ``nu = 1 / (2
    sigma'**2)``, which expands to ``exp(-nu y**2 - nu c**2)``: the target, for any
    ``t > 0``. Here ``c`` is a float64 near ``sigma'**2 / (floor(sigma) + 1)`` and
    ``1 / t = 2 nu c``, both exact dyadic rationals, so every exponent is an exact Decimal.
    The acceptance coin compares a fresh 31-bit word with ``2**31 exp(-gamma(|Y|))``,
    vectorised over the pending draws: a certified float64 enclosure of that threshold
    decides all but about ``5 * 2**-31`` of the draws, exactly as the exact threshold would
    (:meth:`_GaussianPlan.decide`); the rest compare with exact Decimal thresholds and lazy
    bits. The number of rounds is random and data-independent, and the cost per value no
    longer grows with sigma (exact thresholds per distinct ``|Y|`` cost ~50 us each).

    >>> discrete_gaussian(3, 1e-9, SeededBits(0)).tolist()
    [0, 0, 0]
    """
    out = np.zeros(n, dtype=np.int64)
    if n == 0:
        return out
    plan = _gaussian_plan(sigma)
    levels = _laplace_levels(plan.rate)
    pending = np.arange(n)
    while pending.size:
        y = _signed_magnitudes(levels, pending.size, source)
        magnitudes = np.abs(y)
        r = half_words(source, pending.size) >> _ONE
        accept, undecided = plan.decide(magnitudes, r)
        for i in np.flatnonzero(undecided).tolist():
            accept[i] = plan.exact_decision(int(magnitudes[i]), int(r[i]), source)
        out[pending[accept]] = y[accept]
        pending = pending[~accept]
    return out


def bernoulli(probabilities: F64, source: BitSource) -> BoolArray:
    """Independent coins, ``True`` with exactly the given (float64) probabilities.

    ``U < p`` with ``U`` uniform: ``p`` is a float64, so ``floor(p 2**31)`` is exact
    (scaling by a power of two and flooring never round); a word equal to it, when
    ``p 2**31`` has a fractional part, draws more bits (lazy comparison with the exact
    dyadic ``p``). Replaces OpenDP's randomized response for truncated-geometric
    selection: same law, one word per coin, no loop over distinct probabilities.

    >>> bernoulli(np.array([0.0, 1.0, 0.0]), SeededBits(0)).tolist()
    [False, True, False]
    """
    p = np.clip(np.nan_to_num(probabilities, nan=0.0), 0.0, 1.0)
    out = p >= 1.0
    uncertain = np.flatnonzero((p > 0.0) & ~out)
    if uncertain.size == 0:
        return out
    scaled = p[uncertain] * float(2**WORD_BITS)
    floor = np.floor(scaled)
    t = floor.astype(np.uint32)
    r = half_words(source, uncertain.size) >> _ONE
    coins = r < t
    for i in np.flatnonzero((r == t) & (scaled != floor)).tolist():
        exact = Fraction(float(p[uncertain[i]]))

        def enclosure(bits: int, exact: Fraction = exact) -> tuple[int, int]:
            scaled_exact = exact * 2**bits
            return math.floor(scaled_exact), math.ceil(scaled_exact)

        coins[i] = _LazyUniform(int(r[i]), source).less(enclosure)
    out[uncertain] = coins
    return out
