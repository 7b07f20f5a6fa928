"""The public surface is exactly what API.md promises plus deliberate additions."""

import telemagg as tm

API_MD = {
    "Policy",
    "aggregate",
    "Aggregator",
    "count",
    "unit_count",
    "sum",
    "mean",
    "variance",
    "TelemaggError",
    "ConfigError",
    "SchemaError",
    "BudgetExceededError",
    "quantiles",
    "histogram",
    "top_k",
    "Ledger",
    "ConsentRegistry",
    "pseudonymize",
    "scrub_pii",
}


def test_all_is_exactly_the_exported_names() -> None:
    public = {name for name in dir(tm) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(tm, name)).__name__ == "module"}
    assert set(tm.__all__) == public - modules


def test_api_md_names_are_exported() -> None:
    assert set(tm.__all__) >= API_MD


def test_errors_are_value_errors_where_promised() -> None:
    assert issubclass(tm.ConfigError, ValueError)
    assert issubclass(tm.SchemaError, ValueError)
    for name in ("ConfigError", "SchemaError", "BudgetExceededError"):
        assert issubclass(getattr(tm, name), tm.TelemaggError)
