"""bucket_time and truncate_ip: coarser quasi-identifiers, bad specs named."""

from __future__ import annotations

import ipaddress

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemagg.errors import ConfigError, SchemaError
from telemagg.hygiene import bucket_time, truncate_ip
from telemagg.policy import parse_duration

# ------------------------------------------------------------------ bucket_time

widths = st.sampled_from(["1s", "30s", "15m", "1h", "6h", "1d", "7d", "2w"])


@given(st.lists(st.integers(-(10**11), 10**11), max_size=30), widths)
def test_epoch_seconds_fall_in_their_bucket(seconds: list[int], every: str) -> None:
    width = parse_duration(every, "every")
    start = bucket_time(np.array(seconds, dtype=np.int64), every=every)
    assert start.dtype == np.int64
    assert np.all(start % width == 0)
    assert np.all((start <= seconds) & (np.array(seconds) < start + width))


@given(st.lists(st.integers(-(10**17), 10**17), max_size=30), widths)
def test_datetimes_fall_in_their_bucket_and_keep_their_unit(ticks: list[int], every: str) -> None:
    stamps = np.array(ticks, dtype="datetime64[us]")
    start = bucket_time(stamps, every=every)
    assert start.dtype == stamps.dtype
    width = np.timedelta64(parse_duration(every, "every"), "s")
    assert np.all((start <= stamps) & (stamps < start + width))
    assert np.all((start - np.datetime64(0, "s")) % width == np.timedelta64(0, "s"))


def test_buckets_align_to_utc() -> None:
    local = pd.Series(pd.to_datetime(["2024-05-01T00:30:00+02:00"]))  # 2024-04-30 22:30 UTC
    assert bucket_time(local, every="1d").tolist() == [pd.Timestamp("2024-04-30").to_datetime64()]
    assert bucket_time(np.array(["2024-05-01T13:47:12.5"], dtype="datetime64[ms]"), "1h")[
        0
    ] == np.datetime64("2024-05-01T13:00:00.000")


def test_missing_times_stay_missing() -> None:
    out = bucket_time(np.array(["2024-05-01T13:47", "NaT"], dtype="datetime64[m]"), every="1h")
    assert out[0] == np.datetime64("2024-05-01T13:00")
    assert np.isnat(out[1])
    floats = bucket_time([1714571232.5, float("nan")], every="1h")
    assert floats[0] == 1714568400.0
    assert np.isnan(floats[1])


@pytest.mark.parametrize("every", ["3 weeks", "1H", "0h", "-1h", "h", "1.5h", "", 60])
def test_a_bad_width_is_a_config_error_naming_it(every: object) -> None:
    with pytest.raises(ConfigError, match=f"every must look like .*; got {every!r}"):
        bucket_time([0], every=every)  # type: ignore[arg-type]


def test_widths_the_timestamps_cannot_express_are_config_errors() -> None:
    days = np.array(["2024-05-01"], dtype="datetime64[D]")
    with pytest.raises(ConfigError, match="whole number of the timestamps' 1D ticks; got '1h'"):
        bucket_time(days, every="1h")
    assert bucket_time(days, every="7d")[0] == np.datetime64("2024-04-25")  # epoch: a Thursday
    with pytest.raises(SchemaError, match="months and years"):
        bucket_time(np.array(["2024-05"], dtype="datetime64[M]"), every="1d")
    with pytest.raises(SchemaError, match="timestamps must be numpy datetime64"):
        bucket_time(["yesterday"], every="1d")


# ------------------------------------------------------------------ truncate_ip


@given(st.ip_addresses(v=4))
def test_ipv4_keeps_its_slash_24(address: ipaddress.IPv4Address) -> None:
    [network] = truncate_ip([str(address)])
    parsed = ipaddress.ip_network(network)
    assert parsed.prefixlen == 24
    assert address in parsed


@given(st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None))
def test_ipv6_keeps_its_slash_48(address: ipaddress.IPv6Address) -> None:
    [network] = truncate_ip([str(address)])
    parsed = ipaddress.ip_network(network)
    assert parsed.prefixlen == 48
    assert address in parsed


def test_special_forms_and_missing_values() -> None:
    out = truncate_ip(
        pd.Series(["::ffff:192.0.2.77", "fe80::1ff:fe23:4567:890a%eth0", None, "192.0.2.1"])
    )
    assert out.tolist() == ["192.0.2.0/24", "fe80::/48", None, "192.0.2.0/24"]


def test_prefixes_can_be_chosen_and_are_checked() -> None:
    assert truncate_ip(["10.20.30.40"], ipv4_prefix=16).tolist() == ["10.20.0.0/16"]
    assert truncate_ip(["2001:db8:1:2::1"], ipv6_prefix=64).tolist() == ["2001:db8:1:2::/64"]
    with pytest.raises(ConfigError, match="ipv4_prefix must be an integer from 0 to 32; got 33"):
        truncate_ip(["10.0.0.1"], ipv4_prefix=33)
    with pytest.raises(ConfigError, match="ipv6_prefix must be an integer from 0 to 128; got '48'"):
        truncate_ip(["::1"], ipv6_prefix="48")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="invalid must be 'raise' or 'none'; got 'drop'"):
        truncate_ip(["::1"], invalid="drop")  # type: ignore[arg-type]


def test_what_is_no_address_is_refused_without_showing_it_or_becomes_none() -> None:
    values = ["192.0.2.1", "1.2.3.4:80", "unknown"]
    with pytest.raises(SchemaError, match=r"ips\[1\] is not an IPv4 or IPv6 address") as caught:
        truncate_ip(values)
    assert "1.2.3.4" not in str(caught.value)
    assert truncate_ip(values, invalid="none").tolist() == ["192.0.2.0/24", None, None]
