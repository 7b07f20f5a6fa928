"""The persistent privacy budget ledger (``tm.Ledger``) and its ``telemagg budget`` commands."""

from __future__ import annotations

from telemagg.ledger._ledger import Charge, Ledger

__all__ = ["Charge", "Ledger"]
