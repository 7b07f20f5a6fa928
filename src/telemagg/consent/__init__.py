"""Consent and purpose: per-unit opt-out / opt-in choices, checked before aggregation."""

from __future__ import annotations

from telemagg.consent._registry import ConsentChange, ConsentRegistry

__all__ = ["ConsentChange", "ConsentRegistry"]
