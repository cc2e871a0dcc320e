"""Mia core: settings, input contracts, the data root and the synthetic telco."""

from mia.lake import Lake, parse_date
from mia.settings import Settings, load_settings

__all__ = ["Lake", "Settings", "load_settings", "parse_date"]
