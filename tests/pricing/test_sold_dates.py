"""parse_sold_date: the date texts sold-listing APIs send, read against a manual clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kuya_store as ks
from kuya_store.clock import ManualClock

CLOCK = ManualClock(datetime(2025, 11, 27, 15, 30, tzinfo=UTC))


def day(year: int, month: int, d: int) -> datetime:
    return datetime(year, month, d, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sold  Nov 24, 2025", day(2025, 11, 24)),
        ("Sold Nov 24, 2025", day(2025, 11, 24)),
        ("sold nov 24 2025", day(2025, 11, 24)),
        ("Sold\u00a0 Nov 24, 2025", day(2025, 11, 24)),
        ("Sold 24 Nov 2025", day(2025, 11, 24)),
        ("Sold November 3rd, 2025", day(2025, 11, 3)),
        ("Sold Sept 3, 2025", day(2025, 9, 3)),
        ("Nov 24, 2025", day(2025, 11, 24)),
        ("Ended Oct 2, 2025", day(2025, 10, 2)),
        ("Date sold: 11/24/2025", day(2025, 11, 24)),
        ("11/24/25", day(2025, 11, 24)),
        ("2025-11-24", day(2025, 11, 24)),
        ("2025-11-24T18:05:00Z", datetime(2025, 11, 24, 18, 5, tzinfo=UTC)),
        ("2025-11-24T10:05:00-08:00", datetime(2025, 11, 24, 18, 5, tzinfo=UTC)),
        ("Sold 3d ago", CLOCK.now - timedelta(days=3)),
        ("3 days ago", CLOCK.now - timedelta(days=3)),
        ("Sold 2h ago", CLOCK.now - timedelta(hours=2)),
        ("45 mins ago", CLOCK.now - timedelta(minutes=45)),
        ("1w ago", CLOCK.now - timedelta(weeks=1)),
        ("2 months ago", CLOCK.now - timedelta(days=60)),
        ("today", CLOCK.now),
        ("Sold yesterday", CLOCK.now - timedelta(days=1)),
    ],
)
def test_real_date_texts(text: str, expected: datetime) -> None:
    assert ks.parse_sold_date(text, now=CLOCK.now) == expected


def test_a_date_without_a_year_is_the_latest_such_day_not_after_now() -> None:
    assert ks.parse_sold_date("Sold Nov 24", now=CLOCK.now) == day(2025, 11, 24)
    assert ks.parse_sold_date("Sold Dec 24", now=CLOCK.now) == day(2024, 12, 24)
    clock = ManualClock(datetime(2026, 1, 2, tzinfo=UTC))
    assert ks.parse_sold_date("Sold Dec 30", now=clock.now) == day(2025, 12, 30)


def test_relative_dates_follow_the_clock() -> None:
    clock = ManualClock(datetime(2025, 11, 27, tzinfo=UTC))
    first = ks.parse_sold_date("Sold 3d ago", now=clock.now)
    clock.advance(timedelta(days=2))
    assert ks.parse_sold_date("Sold 3d ago", now=clock.now) == first + timedelta(days=2)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "   ",
        "Sold",
        "Sold Item",
        "Feb 30, 2025",
        "13/40/2025",
        "Nov 24, 2031",  # years ahead of the clock: not a sale date
        "sometime last spring",
        "x" * 500,
    ],
)
def test_unreadable_text_is_none_not_a_guess(text: str | None) -> None:
    assert ks.parse_sold_date(text, now=CLOCK.now) is None


def test_a_date_just_after_now_is_now_and_the_result_is_utc() -> None:
    later_today = ks.parse_sold_date("2025-11-27T23:00:00+00:00", now=CLOCK.now)
    assert later_today == CLOCK.now
    tokyo = CLOCK.now.astimezone(timezone(timedelta(hours=9)))
    moment = ks.parse_sold_date("Sold 1h ago", now=tokyo)
    assert moment is not None and moment.tzinfo is UTC


def test_a_naive_clock_is_refused() -> None:
    with pytest.raises(ks.InvalidInputError) as info:
        ks.parse_sold_date("Sold 3d ago", now=datetime(2025, 11, 27))
    assert info.value.field == "now"


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
    ),
    st.text(max_size=40),
)
def test_never_raises_and_never_after_now(now: datetime, text: str) -> None:
    moment = ks.parse_sold_date(text, now=now)
    assert moment is None or (moment.tzinfo is UTC and moment <= now)


@given(st.dates(min_value=day(2000, 1, 1).date(), max_value=day(2025, 11, 27).date()))
def test_every_written_calendar_day_reads_back(d: date) -> None:
    expected = datetime(d.year, d.month, d.day, tzinfo=UTC)
    for text in (
        d.strftime("Sold  %b %d, %Y"),
        d.strftime("%d %B %Y"),
        d.strftime("%m/%d/%Y"),
        d.isoformat(),
    ):
        assert ks.parse_sold_date(text, now=CLOCK.now) == expected, text
