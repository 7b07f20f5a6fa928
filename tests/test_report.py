"""telemagg report: one self-contained HTML page per release, checked in headless Chromium."""

from __future__ import annotations

import base64
import io
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats
from tests.release_files import EVENTS, one_release, windowed_dir
from tests.test_cli_aggregate import BASE, write_events

import telemagg as tm
from telemagg._dataset import ReleaseData
from telemagg.cli import main
from telemagg.report import error_bars, write_report
from telemagg.testing import seeded


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def test_a_release_file_becomes_a_self_contained_page_with_png_files(tmp_path: Path) -> None:
    release = one_release()
    release.to_parquet(tmp_path / "r.parquet")
    page = write_report(tmp_path / "r.parquet", tmp_path / "report.html")
    text = page.read_text()
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == 3  # count, sum, mean
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in text
    assert "<script" not in text
    pngs = sorted(p.name for p in tmp_path.glob("report_*.png"))
    assert pngs == ["report_1_count.png", "report_2_sum_duration.png", "report_3_mean_duration.png"]
    assert base64.b64decode(sources[0].split(",", 1)[1]) == (tmp_path / pngs[0]).read_bytes()
    for column in ("count", "sum_duration", "mean_duration"):
        for value in release.to_dict()[column]:
            assert f"<td>{_fmt(float(value))}</td>" in text
    assert f"epsilon = {_fmt(release.epsilon)}" in text


def test_error_bars_come_from_interval_columns_or_the_noise_scale() -> None:
    release = one_release()
    data = ReleaseData(release.to_arrow(), release.metadata)
    low, high = error_bars(data, "count", 0.9)
    scale = release.metrics["count"].components[-1]["scale"]
    half = scale * math.log(10)  # Laplace: P(|X| <= b ln(1/0.1)) = 0.9
    np.testing.assert_allclose(high - low, 2 * half)
    np.testing.assert_allclose((low + high) / 2, release.to_dict()["count"])
    assert error_bars(data, "mean_duration") is None  # needs interval columns
    table = data.table.append_column("mean_duration_low", pa.array([1.0, 2.0, 3.0]))
    table = table.append_column("mean_duration_high", pa.array([4.0, 5.0, 6.0]))
    low, high = error_bars(ReleaseData(table, release.metadata), "mean_duration")
    assert list(low) == [1.0, 2.0, 3.0]
    assert list(high) == [4.0, 5.0, 6.0]
    with pytest.raises(tm.ConfigError, match="level must be in"):
        error_bars(data, "count", 1.0)


def _coverage(scale_factor: float, releases: int = 300) -> tuple[int, int]:
    """How often the count's 95% bar covers the true count, over seeded releases; the bar's
    half-width multiplied by ``scale_factor`` (1: as drawn)."""
    covered = trials = 0
    for seed in range(releases):
        agg = tm.Aggregator(
            policy=tm.Policy(privacy_unit="u"),
            by="e",
            metrics=[tm.count()],
            randomness=seeded(seed),
        )
        agg.add({"u": np.arange(3000), "e": np.repeat(["a", "b", "c"], 1000)})
        release = agg.release(0.05, partitions=["a", "b", "c"])  # scale 20, far from 0
        data = ReleaseData(release.to_arrow(), release.metadata)
        low, high = error_bars(data, "count", 0.95)
        centre, half = (low + high) / 2, (high - low) / 2 * scale_factor
        covered += int(np.sum(np.abs(centre - 1000) <= half))
        trials += 3
    return covered, trials


@pytest.mark.slow
def test_count_bars_cover_the_truth_at_their_level_and_a_30_percent_narrower_bar_does_not() -> None:
    covered, trials = _coverage(1.0)
    assert stats.binomtest(covered, trials, 0.95).pvalue > 1e-3
    covered, trials = _coverage(0.7)  # the bar a scale 30% too small would draw
    assert stats.binomtest(covered, trials, 0.95).pvalue < 1e-3


def test_windows_draw_time_series_and_the_composed_loss(tmp_path: Path) -> None:
    releases = windowed_dir(tmp_path / "windows")
    page = write_report(tmp_path / "windows", tmp_path / "report.html")
    text = page.read_text()
    assert "per window" not in text  # titles live in the figures; the page says windows:
    assert "3 windows: a unit active in all of them is protected by epsilon = 1.5" in text
    for release in releases:
        for value in release.to_dict()["count"]:
            assert f"<td>{_fmt(float(value))}</td>" in text
    assert (tmp_path / "report_4_privacy_loss.png").exists()


def test_aggregate_then_report_with_the_ledger(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_events(tmp_path / "in")
    tm.Ledger(sqlite_url, epsilon=4.0, delta=1e-5).close()
    out = str(tmp_path / "r.parquet")
    argv = ["aggregate", str(tmp_path / "in"), *BASE, "--ledger", sqlite_url, "--out", out]
    assert main([*argv, "--quiet"]) == 0
    html_path = tmp_path / "report.html"
    assert main(["report", out, "--out", str(html_path), "--ledger", sqlite_url]) == 0
    text = html_path.read_text()
    assert "Ledger total epsilon = 4; spent 1; remaining 3; 1 charges." in text
    assert (tmp_path / "report_6_budget.png").exists()


def test_report_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "r.html")]) == 2
    assert "must name a release file or directory" in capsys.readouterr().err
    one_release().to_parquet(tmp_path / "r.parquet")
    assert main(["report", str(tmp_path / "r.parquet"), "--out", str(tmp_path / "x/r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_report_shows_nothing_of_the_data_beyond_the_release(tmp_path: Path) -> None:
    """D and D' = D + one heavy unit: given the same released table, the pages are the same
    (the metadata of D' adds nothing), and no exact accounting number is on either."""
    release, neighbour = one_release(), one_release(extra_unit=True)
    meta = {**neighbour.metadata, "created_at": release.metadata["created_at"]}
    pages = [
        write_report(ReleaseData(release.to_arrow(), m), tmp_path / f"{i}.html").read_text()
        for i, m in enumerate([release.metadata, meta])
    ]
    assert pages[0].replace("1_", "0_") == pages[1].replace("1_", "0_")  # figure names differ
    text = re.sub(r'src="[^"]*"', "", pages[1])
    numbers = set(re.findall(r"\d+", text))
    assert str(neighbour.accounting.received) not in numbers


# --------------------------------------------------------------------------- browser


def _browser():  # type: ignore[no-untyped-def]
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def test_the_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By

    release = one_release()
    release.to_parquet(tmp_path / "r.parquet")
    page = write_report(tmp_path / "r.parquet", tmp_path / "report.html")
    browser = _browser()
    try:
        browser.get(page.as_uri())
        body = browser.find_element(By.TAG_NAME, "body").text
        shot = browser.get_screenshot_as_png()
        images = browser.execute_script(
            "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"
        )
    finally:
        browser.quit()
    assert images == [True, True, True]  # every inlined figure decoded
    for name, value in zip(EVENTS, release.to_dict()["count"], strict=True):
        assert name in body
        assert _fmt(float(value)) in body
    assert f"epsilon = {_fmt(release.epsilon)}" in body
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=float)
    assert pixels.shape[0] > 500
    assert (pixels < 128).mean() > 0.005  # text and bars: far from a blank page
    assert pixels.std() > 20


def test_histograms_and_top_k_are_listed(tmp_path: Path) -> None:
    agg = tm.Aggregator(
        policy=tm.Policy(privacy_unit="u"),
        by="e",
        metrics=[tm.histogram("v", bins=[0, 10, 100]), tm.top_k("code", k=2)],
        randomness=seeded(3),
    )
    agg.add({"u": np.arange(40), "e": ["a"] * 40, "v": [5.0] * 40, "code": ["x"] * 40})
    release = agg.release(1.0, 1e-6, partitions=["a"])
    text = write_report(release, tmp_path / "report.html").read_text()
    buckets = release.to_dict()["histogram_v"][0]
    assert ", ".join(_fmt(float(b)) for b in buckets) in text
    assert "<h2>top_code</h2>" in text
