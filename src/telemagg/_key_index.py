"""Partition keys as columns, and the index that gives each distinct key a dense id.

What makes two keys one key is decided in :mod:`telemagg._identity` (canonical values,
identities and their 64-bit hashes); this module applies it a column at a time:
:class:`KeyColumns` holds distinct keys as columns of canonical part values, and
:class:`KeyIndex` maps them to dense ids (bounding slots, released rows), finding a key by
its hash and checking every hit against the key itself, so that a hash shared by two keys
never merges them.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from telemagg import _kernels
from telemagg._identity import (
    _BOOL,
    _BYTES,
    _NUMBER,
    _TEXT,
    _identity,
    _identity_hash,
    _key_part,
    _mix64_int,
    _object_array,
    canonical_keys,
    key_hash,
    key_identity,
    mix64,
)
from telemagg.errors import SchemaError

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

__all__ = ["KeyColumns", "KeyIndex", "key_columns", "key_hashes", "object_addresses"]


_LOOKUP_HASH = key_hash
"""The index finds keys by this hash; their bounding hashes go through :func:`key_hash`."""


@dataclass(frozen=True, eq=False)
class KeyColumns:
    """Distinct keys as columns of canonical part values (:func:`canonical_keys`): key
    ``i`` is ``tuple(part[i] for part in parts)``, or ``parts[0][i]`` for single-value keys
    (``single``: categories).

    >>> KeyColumns((np.array([7, 8]), np.array(["a", "b"], dtype=object))).tolist()
    [(7, 'a'), (8, 'b')]
    """

    parts: tuple[npt.NDArray[Any], ...]
    single: bool = False
    _hashes: list[U64] = field(default_factory=list, compare=False, repr=False)  # a cache

    def __len__(self) -> int:
        return int(self.parts[0].size) if self.parts else 0

    def __eq__(self, other: object) -> bool:
        """The same keys, by identity, in the same order."""
        if not isinstance(other, KeyColumns):
            return NotImplemented
        if (self.single, len(self.parts), len(self)) != (
            other.single,
            len(other.parts),
            len(other),
        ):
            return False
        rows = np.arange(len(self))
        return bool(_same_keys(self, rows, other, rows).all())

    __hash__ = None  # type: ignore[assignment]

    def take(self, rows: npt.NDArray[Any]) -> KeyColumns:
        """The keys at ``rows`` (positions or a mask)."""
        cached = [h[rows] for h in self._hashes]
        return KeyColumns(tuple(part[rows] for part in self.parts), self.single, cached)

    def tolist(self) -> list[Any]:
        """The keys as Python values: tuples, or single values."""
        columns = [part.tolist() for part in self.parts]
        return columns[0] if self.single else list(zip(*columns, strict=True))


def key_columns(keys: Iterable[Any]) -> KeyColumns | None:
    """Keys (tuples of equal length, or single non-tuple values) as canonical columns;
    None where the columns cannot say what the value-by-value path says (a missing or
    refused part, mixed shapes), so that that path raises its own error.

    >>> key_columns([(7.0, "a"), (Decimal(8), "b")]).tolist()
    [(7, 'a'), (8, 'b')]
    """
    items = list(keys)
    if not items:
        return None
    if isinstance(items[0], tuple):
        width = len(items[0])
        if not width or any(type(k) is not tuple or len(k) != width for k in items):
            return None
        raw = [_object_array(list(part)) for part in zip(*items, strict=True)]
        single = False
    elif any(isinstance(k, tuple) for k in items):
        return None
    else:
        raw, single = [_object_array(items)], True
    parts = []
    for part in raw:
        try:
            values, missing = canonical_keys(part, column="key")
        except SchemaError:
            return None
        if missing.any():
            return None
        parts.append(values)
    return KeyColumns(tuple(parts), single)


_RANKS: dict[type, int] = {str: _TEXT, int: _NUMBER, float: _NUMBER, Decimal: _NUMBER}
_RANKS.update({bool: _BOOL, bytes: _BYTES})


def _rank(value: Any) -> int:
    """The rank of a canonical key part (cached by type: a canonical value's type says it)."""
    rank = _RANKS.get(type(value))
    if rank is None:
        found = _key_part(value)
        rank = _RANKS[type(value)] = -1 if found is None else found[1][0]
    return rank


_NO_CROSS_RANK_EQUALITY = frozenset({str, int, float, Decimal, bytes})
"""Canonical values of these types are equal only within one rank (canonical floats are
never integral; a bool is the one number-like value of another rank)."""


def _same_parts(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> Bool:
    """Element-wise: do canonical parts ``x`` and ``y`` have one identity (rank and value)?"""
    if x.dtype == y.dtype and x.dtype != object:
        return np.asarray(x == y, dtype=bool)
    if x.dtype == y.dtype == object and x.size:
        # The very same object is one identity: only other pairs are compared by value
        # (keys of a batch built from a vocabulary often are the listed keys' objects).
        same: Bool = np.equal(object_addresses(x), object_addresses(y))
        if not same.all():
            other = np.flatnonzero(~same)
            same[other] = _same_values(x[other], y[other])
        return same
    return _same_values(x, y)


def _same_values(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> Bool:
    """:func:`_same_parts`, value by value (in C where the types allow)."""
    xs, ys = x.astype(object, copy=False), y.astype(object, copy=False)
    same = np.asarray(xs == ys, dtype=bool)
    items_x, items_y = xs.tolist(), ys.tolist()
    if not set(map(type, items_x)).union(map(type, items_y)) <= _NO_CROSS_RANK_EQUALITY:
        same &= np.fromiter(map(_rank, items_x), np.int8, xs.size) == np.fromiter(
            map(_rank, items_y), np.int8, ys.size
        )
    return same


def _same_keys(a: KeyColumns, rows_a: I64, b: KeyColumns, rows_b: I64) -> Bool:
    same = np.ones(rows_a.size, dtype=bool)
    for x, y in zip(a.parts, b.parts, strict=True):
        same &= _same_parts(x[rows_a], y[rows_b])
    return same


def _text_hashes(items: list[str]) -> U64:
    """``_blake(b"s:", text)`` of each string: the digests joined, read as little-endian.

    The tagged strings are encoded at once and split at NUL separators (when no string
    holds a NUL), then hashed by ``map`` without a Python frame per string."""
    if not items:
        return np.zeros(0, dtype=np.uint64)
    data = ("s:" + "\x00s:".join(items)).encode("utf-8")
    if data.count(b"\x00") == len(items) - 1:
        compiled = _kernels.text_hashes(data, len(items))
        if compiled is not None:
            return compiled
        pieces: Iterable[bytes] = data.split(b"\x00")
    else:
        pieces = [b"s:" + t.encode("utf-8") for t in items]
    digests = b"".join(map(_DIGEST, map(_BLAKE8, pieces)))
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


_BLAKE8 = functools.partial(hashlib.blake2b, digest_size=8)
_DIGEST = hashlib.blake2b.digest


def object_addresses(values: npt.NDArray[np.object_]) -> npt.NDArray[np.uintp]:
    """The address of each object of an object array (a copy): while ``values`` lives,
    equal addresses are the very same object.

    >>> a = np.array(["x", "y"], dtype=object)
    >>> bool(object_addresses(a)[0] == object_addresses(a[[0]])[0])
    True
    """
    values = np.ascontiguousarray(values)
    raw = (ctypes.c_char * values.nbytes).from_address(values.ctypes.data)
    return np.frombuffer(memoryview(raw), dtype=np.uintp).copy()


def _part_hashes(part: npt.NDArray[Any]) -> U64:
    """:func:`key_hash` of each canonical part's identity, vectorised where the dtype
    allows (int64: SplitMix64; bool; all-str: one BLAKE2b call each, no dispatch)."""
    if part.dtype.kind == "i":
        return mix64(part.astype(np.int64).view(np.uint64), inplace=True)
    if part.dtype.kind == "b":
        true, false = (_identity_hash((_BOOL, b)) for b in (True, False))
        return np.where(part, np.uint64(true), np.uint64(false))
    items = part.tolist()
    if set(map(type, items)) <= {str}:
        return _text_hashes(items)
    return np.fromiter((_identity_hash(_identity(v)) for v in items), np.uint64, len(items))


def key_hashes(keys: KeyColumns) -> U64:
    """:func:`key_hash` of each key's identity, over whole columns.

    >>> keys = KeyColumns((np.array([5]), np.array(["a"], dtype=object)))
    >>> int(key_hashes(keys)[0]) == key_hash(key_identity((5, "a")))
    True
    """
    if keys._hashes:
        return keys._hashes[0]
    hashes = [_part_hashes(part) for part in keys.parts]
    if keys.single:
        h = hashes[0]
    else:
        h = np.full(len(keys), len(keys.parts), dtype=np.uint64)
        for part_hash in hashes:
            np.bitwise_xor(h, part_hash, out=h)
            mix64(h, inplace=True)
    keys._hashes.append(h)
    return h


def _concat_parts(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> npt.NDArray[Any]:
    if x.dtype != y.dtype:  # never let numpy turn booleans into integers
        x, y = x.astype(object), y.astype(object)
    return np.concatenate([x, y])


_SORTED_QUERIES = 1 << 14
"""From this many keys, a lookup sorts them first (about half the time of random binary
searches over a large index, sort included)."""
_VECTOR_MIN = 64
"""Fewer keys than this take the value-by-value path (numpy's per-call cost dominates)."""
_REHASH = 0x5851F42D4C957F2D
_ByHash = tuple[U64, I64, U64]


_DENSE_SPAN = 4
"""An index of integer keys spanning at most this many times its size (and at least 1,024
values) looks them up in a table from value to id."""


def _dense_table(part: npt.NDArray[Any]) -> tuple[int, I64] | None:
    """(lowest value, id of each value from it: -1 for none) of an int64 part spanning a
    narrow range; None otherwise (or an index of other keys)."""
    if part.dtype != np.int64 or not part.size:
        return None
    lo, hi = int(part.min()), int(part.max())
    if hi - lo >= max(_DENSE_SPAN * part.size, 1024):
        return None
    table = np.full(hi - lo + 1, -1, dtype=np.int64)
    table[part - lo] = np.arange(part.size, dtype=np.int64)
    return lo, table


class KeyIndex:
    """Dense integer ids for keys (partition key tuples, categorical values), by identity.

    Keys equal as values are one id whatever their type; each id has a 64-bit hash that is
    unique within the index (a colliding new key is re-hashed deterministically), so that
    distinct keys never share a bounding slot.

    Keys are held as columns (:class:`KeyColumns`) and found by their identity hash
    (:func:`key_hashes`, whole columns at once) in a sorted array; every hit is checked
    against the key itself. A batch involving a collision (a hash held by another key)
    takes the value-by-value path, which gives the same ids and hashes.

    >>> index = KeyIndex()
    >>> index.ids([("a",), (7,), ("a",), (Decimal(7),)]).tolist()
    [0, 1, 0, 1]
    >>> index.keys
    [('a',), (7,)]
    """

    def __init__(self) -> None:
        self._columns: KeyColumns | None = None  # every key, in id order
        self._lookup = np.zeros(0, np.uint64)  # identity hash of each id
        self._hashes = np.zeros(0, np.uint64)  # bounding hash of each id (distinct)
        self._sorted: _ByHash | None = None  # see _by_hash
        self._keys: list[Any] | None = []
        self._addresses: tuple[npt.NDArray[np.uintp], I64] | None = None  # _find_objects
        self._dense: tuple[int, I64] | None = None  # _find_dense

    def __len__(self) -> int:
        return int(self._lookup.size)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the objects' addresses: they mean nothing in another process."""
        return {**self.__dict__, "_addresses": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(_addresses=None, _dense=None, _sorted=None)  # caches
        self.__dict__.update(state)
        for old in ("_sorted_lookup", "_sorted_ids", "_sorted_hashes"):  # an older pickle's
            self.__dict__.pop(old, None)

    def _by_hash(self) -> _ByHash:
        """The lookup hashes sorted, the id at each, and the bounding hashes sorted: kept
        up to date as keys are added, or (after the first keys of a range of integers,
        which need no sort: see :meth:`_first_integers`) built on first need."""
        if self._sorted is None:
            order = np.argsort(self._lookup, kind="stable")
            self._sorted = (self._lookup[order], order.astype(np.int64), np.sort(self._hashes))
        return self._sorted

    @property
    def keys(self) -> list[Any]:
        """The keys in id order, in canonical released form (tuples or single values)."""
        if self._keys is None:
            assert self._columns is not None
            self._keys = self._columns.tolist()
        return self._keys

    @property
    def columns(self) -> KeyColumns | None:
        """The keys in id order as columns (None while the index is empty)."""
        return self._columns

    @property
    def hashes(self) -> U64:
        """The 64-bit hash of each key: stable, distinct within the index."""
        return self._hashes

    def copy(self) -> KeyIndex:
        """An independent index with the same ids (new keys added to it stay there)."""
        other = KeyIndex.__new__(KeyIndex)
        other.__dict__.update(self.__dict__)  # arrays are replaced, never written in place
        return other

    def ids(self, keys: Iterable[Any] | KeyColumns) -> I64:
        """Ids of ``keys`` (whole columns, or a loop over distinct keys for few or exotic
        ones; never over events), adding new ones."""
        if keys is self._columns and keys is not None:  # this index's own keys, in id order
            return np.arange(len(self), dtype=np.int64)
        columns = keys if isinstance(keys, KeyColumns) else None
        items = None
        if not isinstance(keys, KeyColumns):
            items = list(keys)
            columns = key_columns(items) if len(items) >= _VECTOR_MIN else None
        if columns is not None and len(columns) >= _VECTOR_MIN:
            found = self._ids_vectorised(columns)
            if found is not None:
                return found
        if items is None:
            assert columns is not None
            items = columns.tolist()
        return self._ids_one_by_one(items)

    def lookup(self, keys: KeyColumns) -> I64:
        """Ids of ``keys`` already in the index, -1 for the others (nothing is added).

        Single-value keys that are the very objects this index holds (a batch built from
        the listed keys) are found by address first, without hashing them; integer keys of
        an index of integers in a narrow range, in a table of that range."""
        dense = self._find_dense(keys)
        if dense is not None:
            return dense
        by_address = self._find_objects(keys)
        if by_address is not None:
            found, rest = by_address
            if rest.size:
                found[rest] = self.lookup(keys.take(rest))
            return found
        columnar = self._find_columns(keys)
        if columnar is None:
            return np.fromiter(
                (-1 if (i := self.find(key)) is None else i for key in keys.tolist()),
                np.int64,
                len(keys),
            )
        return columnar

    def _find_dense(self, keys: KeyColumns) -> I64 | None:
        """Ids of one-part int64 keys in an index of one int64 part spanning at most
        ``_DENSE_SPAN`` times its size (a table from value to id); None otherwise."""
        mine = self._columns
        if mine is None or len(keys) < _SORTED_QUERIES or len(mine.parts) != 1:
            return None
        if len(keys.parts) != 1 or keys.parts[0].dtype != np.int64:
            return None
        if self._dense is None:
            self._dense = _dense_table(mine.parts[0])
        if self._dense is None:
            return None
        lo, table = self._dense
        values = keys.parts[0]
        inside = np.flatnonzero((values >= lo) & (values <= lo + table.size - 1))
        found = np.full(values.size, -1, dtype=np.int64)
        found[inside] = table[values[inside] - lo]
        return found

    def _find_objects(self, keys: KeyColumns) -> tuple[I64, I64] | None:
        """Ids of the keys held as the same objects as this index's (-1 for the others) and
        the positions of the others; None unless both hold one part of Python objects and
        some key is found so."""
        mine = self._columns
        if mine is None or len(keys) < _SORTED_QUERIES or len(mine.parts) != 1:
            return None
        if len(keys.parts) != 1 or keys.parts[0].dtype != object or mine.parts[0].dtype != object:
            return None
        if self._addresses is None:
            addresses = object_addresses(mine.parts[0])
            order = np.argsort(addresses)
            self._addresses = (addresses[order], order.astype(np.int64))
        held, ids = self._addresses
        addresses = object_addresses(keys.parts[0])
        probe = addresses[:: max(1, addresses.size // 1024)]  # ~1,024 keys, spread out
        at = np.minimum(np.searchsorted(held, probe), held.size - 1)
        if not np.any(held[at] == probe):
            return None  # most likely none is: not worth a pass over every key
        order = np.argsort(addresses)  # sorted queries: the binary searches walk forward
        addresses = addresses[order]
        at = np.minimum(np.searchsorted(held, addresses), held.size - 1)
        same = held[at] == addresses  # while both hold them, one address is one object
        if not same.any():
            return None
        found = np.empty(len(keys), dtype=np.int64)
        found[order] = np.where(same, ids[at], np.int64(-1))
        return found, np.sort(order[~same])

    def find(self, key: Any) -> int | None:
        """The id of ``key``, None if it is not in the index."""
        return self._find_identity(key_identity(key))

    def remap(self, codes: I64, keys: Sequence[Any] | KeyColumns) -> I64:
        """Ids of ``keys[codes]`` in this index (adding new keys); code -1 (missing) stays -1.

        This is how categorical columns get codes that are global across ``add`` and
        ``merge``: each batch or shard codes its values locally, the index makes them one.

        >>> index = KeyIndex()
        >>> index.ids(["a"]).tolist()  # seen first, in another batch
        [0]
        >>> index.remap(np.array([1, -1, 0]), ["b", "a"]).tolist()  # a, missing, b
        [0, -1, 1]
        """
        # One gather: code -1 reads the appended -1 (this runs on every event of a batch).
        return np.append(self.ids(keys), np.int64(-1))[codes]

    # ------------------------------------------------------------------ vectorised path

    def _find_columns(self, keys: KeyColumns) -> I64 | None:
        """Ids of ``keys`` found in the index (-1: absent), None if a hash is shared by
        another key (the caller goes value by value)."""
        found = np.full(len(keys), -1, dtype=np.int64)
        if not len(self) or not len(keys):
            return found
        if self._columns is None or keys.single != self._columns.single:
            return None
        if len(keys.parts) != len(self._columns.parts):
            return None
        lookup = key_hashes(keys)
        order = None
        if lookup.size >= _SORTED_QUERIES:  # in hash order, the binary searches walk forward
            order = np.argsort(lookup)
            lookup = lookup[order]
        sorted_lookup, sorted_ids, _ = self._by_hash()
        at = np.minimum(np.searchsorted(sorted_lookup, lookup), len(self) - 1)
        hit = np.flatnonzero(sorted_lookup[at] == lookup)
        candidates = sorted_ids[at[hit]]
        if order is not None:
            hit = order[hit]
        if not _same_keys(keys, hit, self._columns, candidates).all():
            return None  # a hash shared by two keys: the first one found is not it
        found[hit] = candidates
        return found

    def _ids_vectorised(self, keys: KeyColumns) -> I64 | None:
        if not len(self):
            first = self._first_integers(keys)
            if first is not None:
                return first
        found = self._find_columns(keys)
        if found is None:
            return None
        new = np.flatnonzero(found < 0)
        if not new.size:
            return found
        fresh = keys if new.size == len(keys) else keys.take(new)
        lookup = key_hashes(fresh)
        order = np.argsort(lookup)  # any order: equal hashes are looked for next
        distinct = lookup[order]
        if distinct.size > 1 and bool(np.any(distinct[1:] == distinct[:-1])):
            return self._add_repeated(keys, found, new, lookup)
        if self._taken_any(distinct):  # a re-hashed key may sit on a new key's hash
            return None
        # All distinct: new keys get ids in order of arrival, each its own hash.
        ids = np.arange(len(self), len(self) + new.size, dtype=np.int64)
        found[new] = ids
        self._append(fresh, lookup, lookup, (distinct, ids[order]))
        return found

    def _first_integers(self, keys: KeyColumns) -> I64 | None:
        """Ids of the first keys of an index when they are distinct integers of one int64
        part in a narrow range (a public list of integer partitions), without sorting:
        SplitMix64 is a bijection of 64-bit words, and so is xoring and mixing in the
        part count, so distinct values have distinct hashes (no collision to resolve);
        distinctness is checked in the range table lookups use. None otherwise."""
        if len(keys.parts) != 1 or len(keys) < _SORTED_QUERIES:
            return None
        part = keys.parts[0]
        dense = _dense_table(part) if part.dtype == np.int64 else None
        if dense is None:
            return None
        lo, table = dense
        ids = np.arange(len(keys), dtype=np.int64)
        if not np.array_equal(table[part - lo], ids):  # a value listed twice
            return None
        lookup = key_hashes(keys)
        self._append(keys, lookup, lookup, sort=False)
        self._dense = dense
        return ids

    def _add_repeated(self, keys: KeyColumns, found: I64, new: I64, lookup: U64) -> I64 | None:
        """:meth:`_ids_vectorised` for new keys some of which share a hash (one key twice,
        as ``7`` and ``7.0``, or a collision)."""
        distinct, first, inverse = np.unique(lookup, return_index=True, return_inverse=True)
        firsts = new[first]
        if distinct.size < new.size and not _same_keys(keys, new, keys, firsts[inverse]).all():
            return None  # two new keys share a hash
        if self._taken_any(distinct):  # a re-hashed key may sit on a new key's hash
            return None
        order = np.argsort(first, kind="stable")  # new keys get ids in order of arrival
        rank = np.empty_like(order)
        rank[order] = np.arange(len(self), len(self) + order.size)
        found[new] = rank[inverse]
        self._append(keys.take(firsts[order]), distinct[order], distinct[order], (distinct, rank))
        return found

    def _taken_any(self, hashes: U64) -> bool:
        """Whether a bounding hash of this index is among ``hashes`` (sorted)."""
        if not len(self):
            return False
        sorted_hashes = self._by_hash()[2]
        at = np.minimum(np.searchsorted(sorted_hashes, hashes), len(self) - 1)
        return bool(np.any(sorted_hashes[at] == hashes))

    def _append(
        self,
        keys: KeyColumns,
        lookup: U64,
        hashes: U64,
        by_lookup: tuple[U64, I64] | None = None,
        *,
        sort: bool = True,
    ) -> None:
        """Add ``keys`` with their lookup and bounding hashes (``by_lookup``: the lookup
        hashes sorted and the new ids in that order, when the caller has them; bounding
        hashes are then the lookup hashes). ``sort=False``, or hash-sorted arrays not
        built yet: they are built from all keys on first need (:meth:`_by_hash`)."""
        if self._columns is None:
            self._columns = keys
        else:
            parts = zip(self._columns.parts, keys.parts, strict=True)
            self._columns = KeyColumns(
                tuple(_concat_parts(x, y) for x, y in parts), self._columns.single
            )
        self._keys = None
        self._addresses = self._dense = None
        first = not self._lookup.size
        self._lookup = lookup if first else np.concatenate([self._lookup, lookup])
        self._hashes = hashes if first else np.concatenate([self._hashes, hashes])
        if not sort or (self._sorted is None and not first):
            self._sorted = None
            return
        if by_lookup is None:
            order = np.argsort(lookup, kind="stable")
            ids = np.arange(len(self) - len(keys), len(self), dtype=np.int64)
            by_lookup = (lookup[order], ids[order])
            sorted_hashes = np.sort(hashes)
        else:
            sorted_hashes = by_lookup[0]
        if first or self._sorted is None:
            self._sorted = (*by_lookup, sorted_hashes)
            return
        old_lookup, old_ids, old_hashes = self._sorted
        at = np.searchsorted(old_lookup, by_lookup[0], side="right")
        merged = (np.insert(old_lookup, at, by_lookup[0]), np.insert(old_ids, at, by_lookup[1]))
        at = np.searchsorted(old_hashes, sorted_hashes)
        self._sorted = (*merged, np.insert(old_hashes, at, sorted_hashes))

    # ------------------------------------------------------------------ value by value

    def _key_at(self, i: int) -> Any:
        assert self._columns is not None
        return self._columns.take(np.array([i])).tolist()[0]

    def _find_identity(self, identity: Any) -> int | None:
        h = np.uint64(_LOOKUP_HASH(identity))
        sorted_lookup, sorted_ids, _ = self._by_hash()
        lo = int(np.searchsorted(sorted_lookup, h, "left"))
        hi = int(np.searchsorted(sorted_lookup, h, "right"))
        for i in sorted_ids[lo:hi].tolist():
            if key_identity(self._key_at(i)) == identity:
                return int(i)
        return None

    def _ids_one_by_one(self, keys: list[Any]) -> I64:
        out: list[int] = []
        added: dict[Any, int] = {}  # identity -> id, of keys new in this call
        released: list[Any] = []
        lookup: list[int] = []
        hashes: list[int] = []
        taken: set[int] = set()
        for key in keys:
            identity = key_identity(key)
            found = added.get(identity)
            if found is None:
                found = self._find_identity(identity)
            if found is None:
                found = added[identity] = len(self) + len(released)
                released.append(_released(key))
                lookup.append(_LOOKUP_HASH(identity))
                h = key_hash(identity)
                while h in taken or self._taken(h):  # two keys, one hash: move the newcomer
                    h = _mix64_int(h ^ _REHASH)
                taken.add(h)
                hashes.append(h)
            out.append(found)
        if released:
            single = not isinstance(released[0], tuple)
            columns = [released] if single else [list(part) for part in zip(*released, strict=True)]
            self._append(
                KeyColumns(tuple(_object_array(c) for c in columns), single),
                np.array(lookup, dtype=np.uint64),
                np.array(hashes, dtype=np.uint64),
            )
        return np.asarray(out, dtype=np.int64)

    def _taken(self, h: int) -> bool:
        sorted_hashes = self._by_hash()[2]
        at = int(np.searchsorted(sorted_hashes, np.uint64(h)))
        return at < sorted_hashes.size and int(sorted_hashes[at]) == h


def _released(key: Any) -> Any:
    """The canonical released form of a key (tuple or single value)."""
    if isinstance(key, tuple):
        return tuple(_released_part(part) for part in key)
    return _released_part(key)


def _released_part(part: Any) -> Any:
    if type(part) is str or type(part) is int:
        return part
    found = _key_part(part)
    return None if found is None else found[0]
