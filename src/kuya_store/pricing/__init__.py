"""Pricing domain: query syntax, card identifiers, titles, sale dates, filters, valuation.

Pure code: no I/O. See ``docs/pricing.md`` for the rules and formulas.
"""

from __future__ import annotations

from kuya_store.pricing.cards import normalize_card
from kuya_store.pricing.dates import parse_sold_date
from kuya_store.pricing.filters import apply_filters, exclude_terms, keep_listing
from kuya_store.pricing.grades import GradeOutcome, GradingOutlook, grading_outlook
from kuya_store.pricing.query import MAX_QUERY_LENGTH, SearchQuery, parse_query
from kuya_store.pricing.titles import TitleInfo, clear_title_cache, parse_title
from kuya_store.pricing.valuation import DefaultValuator, Valuator

__all__ = [
    "MAX_QUERY_LENGTH",
    "DefaultValuator",
    "GradeOutcome",
    "GradingOutlook",
    "SearchQuery",
    "TitleInfo",
    "Valuator",
    "apply_filters",
    "clear_title_cache",
    "exclude_terms",
    "grading_outlook",
    "keep_listing",
    "normalize_card",
    "parse_query",
    "parse_sold_date",
    "parse_title",
]
