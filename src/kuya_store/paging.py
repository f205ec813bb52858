"""Paged fetchers: one upstream request per page, and the decisions about pages (pure code).

A marketplace bills every page it serves. Registered with :func:`paged`, a fetcher
returns one page per call (``FetchRequest.page``, 1-based, newest first for sold
listings); the store asks pages 1..N itself, so it can stop early:

- a full fetch stops when the upstream says there is no more (``has_more=False``) or a
  page comes back short;
- a refresh of a stored sold result stops at the first page that reaches a sale it
  already holds (sold listings never change), and merges the new sales in front.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kuya_store.models import FetchRequest, FetchResult, Listing, Params

__all__ = ["PageVerdict", "PagedFetcher", "after_page", "merge_sales", "paged", "pages_wanted"]


class PagedFetcher:
    """A fetcher that answers one page per call; made by :func:`paged`."""

    def __init__(self, fetcher: object, page_size: int | None) -> None:
        if not callable(fetcher):
            raise TypeError("paged() takes a callable fetcher")
        if page_size is not None and (isinstance(page_size, bool) or page_size < 1):
            raise ValueError("page_size must be a positive integer or None")
        self.fetcher = fetcher
        self.page_size = page_size

    def __call__(self, request: FetchRequest) -> Any:
        return self.fetcher(request)

    def __repr__(self) -> str:
        return f"paged({self.fetcher!r}, page_size={self.page_size})"


def paged(fetcher: object, *, page_size: int | None = None) -> PagedFetcher:
    """Register ``fetcher`` as returning one page per call.

    Args:
        fetcher: ``(FetchRequest) -> FetchResult`` for ``request.page``; sync or async.
        page_size: listings in a full page, if known; otherwise the first full page
            (one with ``has_more=True``) tells.
    """
    return PagedFetcher(fetcher, page_size)


def pages_wanted(params: Params, default: int) -> int:
    """How many pages a full fetch asks: ``params["pages"]`` when it is a positive int."""
    value = params.get("pages")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return min(value, 100)
    return default


@dataclass(frozen=True, slots=True)
class PageVerdict:
    """What one page says about the pages after it."""

    stop: bool
    complete: bool | None
    """The upstream has nothing beyond this page (``None``: it cannot be told)."""
    reached_known: bool = False


def after_page(
    page: FetchResult,
    number: int,
    wanted: int,
    page_size: int | None,
    known: frozenset[str] = frozenset(),
) -> PageVerdict:
    """Decide whether to ask for the next page.

    Args:
        number: this page's number (1-based); ``wanted``: the last page to ask.
        known: item ids a stored result already holds (a refresh stops at them).
    """
    if known and any(x.item_id in known for x in page.listings):
        return PageVerdict(stop=True, complete=None, reached_known=True)
    if page.has_more is False or not page.listings:
        return PageVerdict(stop=True, complete=True)
    if page_size is not None and len(page.listings) < page_size and page.has_more is not True:
        return PageVerdict(stop=True, complete=True)
    if number >= wanted:
        full = page_size is not None and len(page.listings) >= page_size
        return PageVerdict(stop=True, complete=False if page.has_more or full else None)
    return PageVerdict(stop=False, complete=None)


def merge_sales(
    new: Sequence[Listing], stored: Sequence[Listing], limit: int | None
) -> tuple[list[Listing], bool]:
    """New sales in front of the stored ones, each ``item_id`` once, at most ``limit``.

    Returns the merged listings and whether the bound cut any off.
    """
    seen: set[str] = set()
    merged: list[Listing] = []
    for listing in (*new, *stored):
        if listing.item_id not in seen:
            seen.add(listing.item_id)
            merged.append(listing)
    if limit is not None and len(merged) > limit:
        return merged[:limit], True
    return merged, False
