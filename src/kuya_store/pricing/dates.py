"""``parse_sold_date``: the sale date that sold-listing APIs send as display text.

Sold-listing search APIs often give the sale date only as the text the marketplace shows
("Sold  Nov 24, 2025", "Sold 3d ago"). Without a date every sale looks equally old to the
valuator, so fetchers turn that text into ``Listing.sold_date`` with this function. The
rules are listed in ``docs/pricing.md``; anything unreadable is ``None``, never a guess.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from kuya_store.errors import InvalidInputError

__all__ = ["parse_sold_date"]

_MONTHS = {
    "jan": 1,
    "feb": 2,
    "mar": 3,
    "apr": 4,
    "may": 5,
    "jun": 6,
    "jul": 7,
    "aug": 8,
    "sep": 9,
    "oct": 10,
    "nov": 11,
    "dec": 12,
}
_MONTH = (
    r"(?P<month>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|"
    r"aug(?:ust)?|sept?(?:ember)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_PREFIX = re.compile(
    r"^(?:(?:date\s+)?(?:sold|ended|sale|purchased)(?:\s+(?:on|date|item))?\s*:?\s*)+"
)
_DAY = r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
_YEAR = r"(?:,?\s+(?P<year>\d{4}))?"
_MONTH_DAY_YEAR = re.compile(rf"^{_MONTH}\s+{_DAY}{_YEAR}$")
_DAY_MONTH_YEAR = re.compile(rf"^{_DAY}\s+{_MONTH}{_YEAR}$")
_NUMERIC = re.compile(r"^(?P<month>\d{1,2})[/-](?P<day>\d{1,2})[/-](?P<year>\d{4}|\d{2})$")
_AGO = re.compile(
    r"^(?P<n>\d{1,4})\s*(?P<unit>s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?|d|days?|"
    r"w|wks?|weeks?|mo|mos|months?|y|yrs?|years?)\s+ago$"
)
_UNIT_SECONDS = {
    "s": 1,
    "m": 60,
    "h": 3_600,
    "d": 86_400,
    "w": 7 * 86_400,
    "mo": 30 * 86_400,
    "y": 365 * 86_400,
}
# A date a little after ``now`` is a time-zone difference; far after it is not a sale date.
_FUTURE_SLACK = timedelta(days=1)


def _unit(word: str) -> str:
    if word.startswith("mo"):
        return "mo"
    if word.startswith("mi") or word == "m":
        return "m"
    return word[0]


def _calendar(year: int, month: int, day: int) -> datetime | None:
    try:
        return datetime(year, month, day, tzinfo=UTC)
    except ValueError:
        return None


def _without_year(month: int, day: int, now: datetime) -> datetime | None:
    """The latest such day that is not after ``now`` (a listing shows the past year)."""
    for year in (now.year, now.year - 1):
        moment = _calendar(year, month, day)
        if moment is not None and moment <= now + _FUTURE_SLACK:
            return moment
    return None


def _iso(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _read(text: str, now: datetime) -> datetime | None:
    if text in ("today", "just now", "now"):
        return now
    if text == "yesterday":
        return now - timedelta(days=1)
    if m := _AGO.match(text):
        return now - timedelta(seconds=int(m["n"]) * _UNIT_SECONDS[_unit(m["unit"])])
    for pattern in (_MONTH_DAY_YEAR, _DAY_MONTH_YEAR):
        if m := pattern.match(text):
            month = _MONTHS[m["month"][:3]]
            day = int(m["day"])
            if m["year"] is None:
                return _without_year(month, day, now)
            return _calendar(int(m["year"]), month, day)
    if m := _NUMERIC.match(text):
        year = int(m["year"])
        return _calendar(year + 2000 if year < 100 else year, int(m["month"]), int(m["day"]))
    if re.match(r"^\d{4}-\d{2}-\d{2}", text):
        return _iso(text)
    return None


def parse_sold_date(text: str | None, *, now: datetime) -> datetime | None:
    """The UTC moment a sold-listing API's date text names, or ``None`` when unreadable.

    Reads "Sold  Nov 24, 2025", "Sold 24 Nov 2025", "Sold Nov 24" (the latest such day),
    "11/24/2025", ISO dates and datetimes, "Sold 3d ago", "2 hours ago", "today" and
    "yesterday". Calendar dates are midnight UTC; relative ones count back from ``now``.
    A moment up to a day after ``now`` is read as ``now`` (time zones); later ones and
    impossible dates are ``None``.

    Raises:
        InvalidInputError: ``field="now"`` when ``now`` is naive.
    """
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise InvalidInputError("now", "must be a timezone-aware datetime")
    if not isinstance(text, str) or len(text) > 200:
        return None
    now = now.astimezone(UTC)
    cleaned = re.sub(r"\s+", " ", text.replace("\u00a0", " ")).strip().lower()
    cleaned = _PREFIX.sub("", cleaned).strip()
    moment = _read(cleaned, now) if cleaned else None
    if moment is None or moment > now + _FUTURE_SLACK:
        return None
    return min(moment, now)
