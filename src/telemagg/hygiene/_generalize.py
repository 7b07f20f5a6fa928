"""Generalisation of quasi-identifiers: coarser timestamps and truncated IP addresses.

An exact event time or a full IP address, joined with other columns, can single a person
out even when no name is stored (Sweeney 2002, "k-anonymity"). Coarsening them before the
events are stored or aggregated keeps what diagnostics need (the hour, the network) and
drops what identifies (the second, the host).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from telemagg._identity import as_1d_array, factorize_ids
from telemagg.errors import ConfigError, SchemaError
from telemagg.policy import parse_duration

__all__ = ["bucket_time", "truncate_ip"]


def bucket_time(timestamps: Iterable[Any] | npt.ArrayLike, every: str = "1h") -> npt.NDArray[Any]:
    """The start of the ``every``-long bucket that holds each timestamp.

    ``every`` is a duration such as ``"30s"``, ``"15m"``, ``"1h"``, ``"1d"`` or ``"1w"``.

    Buckets are aligned to the Unix epoch in UTC, so ``"1d"`` buckets start at UTC midnight
    and ``"1h"`` buckets on the hour. Two kinds of input, and the output is the same kind:

    * ``numpy.datetime64`` values (or a pandas datetime Series; time-zone-aware ones are
      converted to UTC first): datetime64 bucket starts in the input's unit, NaT kept;
    * numbers, read as seconds since the epoch: bucket starts as seconds, in the input's
      dtype (integers stay integers), NaN kept.

    >>> bucket_time(np.array(["2024-05-01T13:47:12"], dtype="datetime64[s]"), every="15m")
    array(['2024-05-01T13:45:00'], dtype='datetime64[s]')
    >>> bucket_time([1714571232, 1714571999], every="1h")
    array([1714568400, 1714568400])
    """
    width = parse_duration(every, "every")
    array = _as_time_array(timestamps)
    if array.dtype.kind == "M":
        ticks = _ticks(width, array.dtype, every)
        raw = array.view(np.int64)
        buckets = np.floor_divide(raw, ticks) * ticks
        buckets[np.isnat(array)] = raw[np.isnat(array)]  # NaT is the int64 minimum: keep it
        result: npt.NDArray[Any] = buckets.view(array.dtype)
    elif array.dtype.kind in "iu":
        result = np.floor_divide(array, width) * width
    elif array.dtype.kind == "f":
        result = np.floor(array / width) * width
    else:
        raise SchemaError(
            "timestamps must be numpy datetime64 values or numbers of seconds since the "
            f"epoch; got values of dtype {array.dtype}"
        )
    return result


_TICKS_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9, "ps": 10**12}
_SECONDS_PER_TICK = {"m": 60, "h": 3600, "D": 86400, "W": 7 * 86400}


def _ticks(width: int, dtype: np.dtype[Any], every: str) -> int:
    """How many ticks of a datetime64 ``dtype`` make ``width`` seconds."""
    unit, count = np.datetime_data(dtype)
    if unit in _TICKS_PER_SECOND:
        ticks, remainder = divmod(width * _TICKS_PER_SECOND[unit], count)
    elif unit in _SECONDS_PER_TICK:
        ticks, remainder = divmod(width, _SECONDS_PER_TICK[unit] * count)
    else:
        raise SchemaError(
            f"timestamps of dtype {dtype} cannot be bucketed (months and years vary in "
            "length); convert them to datetime64[s] first"
        )
    if ticks == 0 or remainder:
        raise ConfigError(
            f"every must be a whole number of the timestamps' {count}{unit} ticks; got {every!r}"
        )
    return int(ticks)


def _as_time_array(timestamps: Iterable[Any] | npt.ArrayLike) -> npt.NDArray[Any]:
    dt = getattr(timestamps, "dt", None)  # a pandas Series of datetimes
    if dt is not None and getattr(dt, "tz", None) is not None:
        timestamps = dt.tz_convert("UTC").dt.tz_localize(None)
    array = as_1d_array(timestamps, param="timestamps")
    if array.dtype == object:
        try:  # a list of numbers or of datetime64 values
            array = np.asarray(array.tolist())
        except (TypeError, ValueError) as exc:
            raise SchemaError(
                "timestamps must be numpy datetime64 values or numbers of seconds since the "
                "epoch; got a mixture numpy cannot read as either"
            ) from exc
    return array


def truncate_ip(
    ips: Iterable[Any] | npt.ArrayLike,
    *,
    ipv4_prefix: int = 24,
    ipv6_prefix: int = 48,
    invalid: Literal["raise", "none"] = "raise",
) -> npt.NDArray[np.object_]:
    """Each IP address as the network that holds it, in CIDR notation.

    IPv4 addresses keep their first ``ipv4_prefix`` bits (/24: the host byte goes), IPv6
    addresses their first ``ipv6_prefix`` bits (/48: a site's routing prefix). An
    IPv4-mapped IPv6 address (``::ffff:192.0.2.7``) is treated as the IPv4 address it maps.
    Missing values (None, NaN) stay ``None``. What is not an address (``"unknown"``,
    ``"1.2.3.4:80"``, ``"[::1]"``) raises a :class:`~telemagg.errors.SchemaError` naming its
    position, or becomes ``None`` with ``invalid="none"``. Each distinct address is parsed
    once; the result is a numpy object array of ``str``/``None``.

    >>> truncate_ip(["192.0.2.77", "2001:db8:85a3:8d3:1319:8a2e:370:7348", None]).tolist()
    ['192.0.2.0/24', '2001:db8:85a3::/48', None]
    >>> truncate_ip(["unknown"], invalid="none").tolist()
    [None]
    """
    _check_prefix(ipv4_prefix, "ipv4_prefix", 32)
    _check_prefix(ipv6_prefix, "ipv6_prefix", 128)
    if invalid not in ("raise", "none"):
        raise ConfigError(f"invalid must be 'raise' or 'none'; got {invalid!r}")
    factorized = factorize_ids(ips, param="ips")
    networks = np.empty(len(factorized.distinct) + 1, dtype=object)  # last slot: missing
    for code, text in enumerate(factorized.distinct):
        networks[code] = _network(text, ipv4_prefix, ipv6_prefix)
    networks[-1] = None
    if invalid == "raise" and any(n is None for n in networks[:-1]):
        bad_code = next(code for code, n in enumerate(networks[:-1]) if n is None)
        position = int(np.argmax(factorized.codes == bad_code))
        raise SchemaError(
            f"ips[{position}] is not an IPv4 or IPv6 address (the value is not shown: it may "
            "identify someone); pass invalid='none' to turn such values into None"
        )
    result: npt.NDArray[np.object_] = networks[factorized.codes]
    return result


def _check_prefix(prefix: int, param: str, bits: int) -> None:
    if isinstance(prefix, bool) or not isinstance(prefix, int) or not 0 <= prefix <= bits:
        raise ConfigError(f"{param} must be an integer from 0 to {bits}; got {prefix!r}")


def _network(text: str, ipv4_prefix: int, ipv6_prefix: int) -> str | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        return str(ipaddress.IPv4Network((address, ipv4_prefix), strict=False))
    # A scope id ("fe80::1%eth0") names a local interface; it goes with the host bits.
    unscoped = ipaddress.IPv6Address(address.packed)
    return str(ipaddress.IPv6Network((unscoped, ipv6_prefix), strict=False))
