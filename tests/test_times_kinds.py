"""Times, durations, zones and reminder kinds: properties (hypothesis) and DST examples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from notifyctl.errors import InvalidInput
from notifyctl.kinds import DEFAULT_KINDS, KINDS, Kind, parse_kind, parse_kinds
from notifyctl.service import Store, create_booking
from notifyctl.times import MAX_DURATION, localize, parse_duration, parse_time
from tests import dbstate as db
from tests.support import FrozenClock

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
# No per-example deadline: a loaded CI machine must not turn a slow example into a failure.
relaxed = settings(deadline=None)

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_SECONDS = int(MAX_DURATION.total_seconds())
BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

durations = st.integers(min_value=1, max_value=MAX_SECONDS)
instants = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/St_Johns",  # -03:30 / -02:30
    "Australia/Lord_Howe",  # 30-minute DST
    "Pacific/Chatham",  # +12:45 / +13:45
    "Asia/Kolkata",
]
# Local wall-clock starts of a DST gap, and their lengths: the skipped times.
GAPS = [
    ("Europe/Berlin", datetime(2026, 3, 29, 2, 0), timedelta(hours=1)),
    ("America/New_York", datetime(2026, 3, 8, 2, 0), timedelta(hours=1)),
    ("America/St_Johns", datetime(2026, 3, 8, 2, 0), timedelta(hours=1)),
    ("Australia/Lord_Howe", datetime(2026, 10, 4, 2, 0), timedelta(minutes=30)),
    ("Pacific/Chatham", datetime(2026, 9, 27, 2, 45), timedelta(hours=1)),
]


def as_units(seconds: int) -> str:
    """``93784`` → ``1d2h3m4s`` (zero parts left out)."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s"))
    return "".join(f"{n}{unit}" for n, unit in parts if n)


def in_gap(naive: datetime, zone: ZoneInfo) -> bool:
    """PEP 495: in a gap, fold=0 uses the (smaller) offset from before the jump."""
    before = naive.replace(tzinfo=zone, fold=0).utcoffset()
    after = naive.replace(tzinfo=zone, fold=1).utcoffset()
    assert before is not None
    assert after is not None
    return before < after


# --- durations ----------------------------------------------------------------------------------


@relaxed
@given(durations)
def test_any_duration_written_in_units_parses_back(seconds: int) -> None:
    assert parse_duration(as_units(seconds)) == timedelta(seconds=seconds)


@relaxed
@given(
    st.lists(
        st.tuples(st.integers(0, 99_999), st.sampled_from(sorted(UNIT_SECONDS))),
        min_size=1,
        max_size=5,
    ),
    st.booleans(),
)
def test_a_duration_is_the_sum_of_its_parts(parts: list[tuple[int, str]], upper: bool) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    text = f" {text.upper()} " if upper else text
    total = sum(n * UNIT_SECONDS[unit] for n, unit in parts)

    if 0 < total <= MAX_SECONDS:
        assert parse_duration(text) == timedelta(seconds=total)
    else:
        with pytest.raises(InvalidInput, match="between 1s and 3650d"):
            parse_duration(text)


@relaxed
@given(st.text(max_size=16))
@example("")
@example("0m")
@example("-1h")
@example("1.5h")
@example("1 h")
@example("h")
@example("3651d")
def test_duration_parser_returns_a_bounded_delta_or_rejects(text: str) -> None:
    parsed: timedelta | InvalidInput
    try:
        parsed = parse_duration(text)
    except InvalidInput as e:
        parsed = e

    if isinstance(parsed, InvalidInput):
        assert "invalid duration" in parsed.message
    else:
        assert timedelta(0) < parsed <= MAX_DURATION


# --- times --------------------------------------------------------------------------------------


@relaxed
@given(durations, instants, st.sampled_from(ZONES))
def test_relative_time_is_now_plus_the_duration(seconds: int, now: datetime, zone: str) -> None:
    parsed = parse_time(f"+{as_units(seconds)}", ZoneInfo(zone), now)

    assert parsed == now + timedelta(seconds=seconds)
    assert parsed.tzinfo is UTC


@relaxed
@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(2200, 1, 1),
        timezones=st.timezones(),
    ),
    st.sampled_from(ZONES),
    st.sampled_from(["T", " "]),
)
def test_aware_time_is_the_same_instant_in_utc(value: datetime, zone: str, sep: str) -> None:
    parsed = parse_time(value.isoformat(sep=sep), ZoneInfo(zone), NOW)

    assert parsed == value.astimezone(UTC)  # (== across zones is False in folds and gaps)
    assert parsed.tzinfo is UTC


@relaxed
@given(instants)
def test_z_suffix_means_utc(value: datetime) -> None:
    text = value.replace(tzinfo=None).isoformat() + "Z"

    assert parse_time(text, BERLIN, NOW) == value


@relaxed
@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2037, 12, 31)),
    st.sampled_from(ZONES),
)
def test_naive_time_round_trips_through_its_zone_unless_skipped(naive: datetime, name: str) -> None:
    check_naive_time(naive, ZoneInfo(name))


@relaxed
@given(
    st.sampled_from(GAPS),
    st.integers(min_value=-90, max_value=150),
    st.integers(min_value=0, max_value=59),
)
def test_naive_times_around_a_dst_gap(
    gap: tuple[str, datetime, timedelta], minutes: int, seconds: int
) -> None:
    name, start, length = gap
    naive = start + timedelta(minutes=minutes, seconds=seconds)
    zone = ZoneInfo(name)

    check_naive_time(naive, zone)
    assert in_gap(naive, zone) == (start <= naive < start + length)


def check_naive_time(naive: datetime, zone: ZoneInfo) -> None:
    if in_gap(naive, zone):
        with pytest.raises(InvalidInput, match="does not exist"):
            localize(naive, zone)
        with pytest.raises(InvalidInput, match="does not exist"):
            parse_time(naive.isoformat(), zone, NOW)
        return
    aware = localize(naive, zone)
    assert aware.tzinfo is UTC
    assert aware.astimezone(zone).replace(tzinfo=None) == naive
    # of a repeated hour, the earlier one
    assert aware == naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    assert parse_time(naive.isoformat(sep=" "), zone, NOW) == aware


@pytest.mark.parametrize(
    "text",
    ["tomorrow", "18:00", "2026-13-01", "2026-02-30 10:00", "+", "+-1h", "", "   "],
)
def test_unparseable_times_are_rejected(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_time(text, BERLIN, NOW)


@pytest.mark.parametrize(
    ("text", "zone"),
    [
        ("0001-01-01T00:00+01:00", "UTC"),
        ("9999-12-31T23:59-01:00", "UTC"),
        ("0001-01-01 00:00", "Europe/Berlin"),
        ("9999-12-31 23:59", "America/New_York"),
    ],
)
def test_times_outside_the_utc_range_are_rejected(text: str, zone: str) -> None:
    with pytest.raises(InvalidInput):
        parse_time(text, ZoneInfo(zone), NOW)


# --- kinds --------------------------------------------------------------------------------------


def test_the_named_kinds_follow_the_spec_table() -> None:
    start = datetime(2030, 1, 10, 17, 0, tzinfo=UTC)
    end = start + timedelta(hours=2)

    table = {
        name: (kind.scheduled_at(start, end), kind.not_after(start, end))
        for name, kind in KINDS.items()
    }

    assert table == {
        "day_before": (start - timedelta(hours=24), start),
        "hour_before": (start - timedelta(hours=1), start),
        "at_start": (start, end),
        "before_end": (end - timedelta(minutes=5), end),
    }
    assert DEFAULT_KINDS == ("day_before", "hour_before", "at_start", "before_end")


@relaxed
@given(
    st.sampled_from(["start", "end"]),
    st.sampled_from(["-", "+"]),
    st.integers(min_value=1, max_value=MAX_SECONDS // 60),
    instants,
    st.integers(min_value=1, max_value=100_000),
    st.booleans(),
)
def test_offset_kinds_are_scheduled_from_their_anchor(
    anchor: str, sign: str, minutes: int, start: datetime, length: int, upper: bool
) -> None:
    text = f"{anchor}{sign}{minutes}m"
    end = start + timedelta(minutes=length)

    kind = parse_kind(text.upper() if upper else text)

    base = start if anchor == "start" else end
    offset = timedelta(minutes=minutes) * (-1 if sign == "-" else 1)
    assert parse_kind(kind.name) == kind  # the canonical name parses back to itself
    assert kind.scheduled_at(start, end) == base + offset
    # before the start: useful until the start; anything later: until the end
    expected_until = start if (anchor, sign) == ("start", "-") else end
    assert kind.not_after(start, end) == expected_until
    assert parse_kind(kind.name) == kind


@pytest.mark.parametrize(
    ("text", "scheduled", "until"),
    [
        ("start-30m", timedelta(minutes=-30), "start"),
        ("start-2d", timedelta(days=-2), "start"),
        ("start-1h30m", timedelta(minutes=-90), "start"),
        ("start+10m", timedelta(minutes=10), "end"),
        ("end-10m", timedelta(minutes=-10), "end"),
        ("  Hour_Before ", timedelta(hours=-1), "start"),
    ],
)
def test_offset_examples(text: str, scheduled: timedelta, until: str) -> None:
    kind = parse_kind(text)

    assert kind.offset == scheduled
    assert kind.valid_until == until


@relaxed
@given(st.text(max_size=20))
@example("start-")
@example("start-0m")
@example("start-30")
@example("start*30m")
@example("middle-30m")
@example("start-5000d")
def test_kind_parser_returns_a_kind_or_rejects(text: str) -> None:
    kind: Kind | InvalidInput
    try:
        kind = parse_kind(text)
    except InvalidInput as e:
        kind = e

    if isinstance(kind, InvalidInput):
        assert "reminder" in kind.message
    else:
        assert kind.name in KINDS or kind.name.startswith(("start", "end"))
        assert parse_kind(kind.name) == kind


def test_parse_kinds_defaults_splits_and_deduplicates() -> None:
    assert [k.name for k in parse_kinds(None)] == list(DEFAULT_KINDS)
    assert [k.name for k in parse_kinds([])] == list(DEFAULT_KINDS)
    assert [k.name for k in parse_kinds(["at_start,START-30m", "start-30m  at_start"])] == [
        "at_start",
        "start-30m",
    ]
    with pytest.raises(InvalidInput, match="unknown reminder kind 'soon'"):
        parse_kinds(["at_start", "soon"])


# --- bookings across the Europe/Berlin DST changes (stored on both dialects) ----------------------


def berlin_booking(
    store: Store, url: str, booking_id: str, starts: str, ends: str
) -> dict[str, Any]:
    create_booking(
        store,
        booking_id,
        starts_at=starts,
        ends_at=ends,
        timezone="Europe/Berlin",
        to=["console:a"],
    )
    stored = db.booking(url, booking_id)
    stored["reminders"] = {r["kind"]: r["scheduled_at"] for r in db.reminders(url, booking_id)}
    return stored


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_bookings_on_each_side_of_spring_forward(
    store: Store, clock: FrozenClock, database_url: str
) -> None:
    clock.set(utc(2026, 3, 1, 12, 0))

    saturday = berlin_booking(store, database_url, "sat", "2026-03-28 18:00", "2026-03-28 19:00")
    sunday = berlin_booking(store, database_url, "sun", "2026-03-29 18:00", "2026-03-29 19:00")

    assert saturday["starts_at"] == utc(2026, 3, 28, 17, 0)  # CET, +01:00
    assert sunday["starts_at"] == utc(2026, 3, 29, 16, 0)  # CEST, +02:00
    assert sunday["reminders"] == {
        "day_before": utc(2026, 3, 28, 16, 0),  # 24 real hours: 17:00 local on Saturday
        "hour_before": utc(2026, 3, 29, 15, 0),
        "at_start": utc(2026, 3, 29, 16, 0),
        "before_end": utc(2026, 3, 29, 16, 55),
    }
    assert sunday["reminders"]["day_before"].astimezone(BERLIN).hour == 17


def test_bookings_on_each_side_of_fall_back(
    store: Store, clock: FrozenClock, database_url: str
) -> None:
    clock.set(utc(2026, 10, 1, 12, 0))

    saturday = berlin_booking(store, database_url, "sat", "2026-10-24 18:00", "2026-10-24 19:00")
    sunday = berlin_booking(store, database_url, "sun", "2026-10-25 18:00", "2026-10-25 19:00")

    assert saturday["starts_at"] == utc(2026, 10, 24, 16, 0)  # CEST, +02:00
    assert sunday["starts_at"] == utc(2026, 10, 25, 17, 0)  # CET, +01:00
    assert sunday["reminders"]["day_before"] == utc(2026, 10, 24, 17, 0)
    assert sunday["reminders"]["day_before"].astimezone(BERLIN).hour == 19


@sqlite_only
def test_booking_across_the_changes_lasts_real_hours(
    store: Store, clock: FrozenClock, database_url: str
) -> None:
    clock.set(utc(2026, 3, 1, 12, 0))

    spring = berlin_booking(store, database_url, "spring", "2026-03-29 01:30", "2026-03-29 03:30")
    autumn = berlin_booking(store, database_url, "autumn", "2026-10-25 01:30", "2026-10-25 03:30")

    assert spring["ends_at"] - spring["starts_at"] == timedelta(hours=1)
    assert autumn["ends_at"] - autumn["starts_at"] == timedelta(hours=3)
    assert spring["reminders"]["before_end"] == utc(2026, 3, 29, 1, 25)
    assert autumn["reminders"]["before_end"] == utc(2026, 10, 25, 2, 25)


@sqlite_only
def test_repeated_hour_means_its_first_occurrence(
    store: Store, clock: FrozenClock, database_url: str
) -> None:
    clock.set(utc(2026, 10, 1, 12, 0))

    booking = berlin_booking(store, database_url, "b1", "2026-10-25 02:30", "2026-10-25 04:00")

    assert booking["starts_at"] == utc(2026, 10, 25, 0, 30)  # 02:30 CEST, not 02:30 CET


@sqlite_only
def test_skipped_hour_is_rejected_and_nothing_is_stored(
    store: Store, clock: FrozenClock, database_url: str
) -> None:
    clock.set(utc(2026, 3, 1, 12, 0))

    with pytest.raises(InvalidInput, match=r"2026-03-29 02:30:00 does not exist in Europe/Berlin"):
        create_booking(
            store,
            "b1",
            starts_at="2026-03-29 02:30",
            ends_at="2026-03-29 04:00",
            timezone="Europe/Berlin",
            to=["console:a"],
        )

    assert db.counts(database_url) == (0, 0)


def test_fixed_offset_input_keeps_the_instant() -> None:
    plus_five_thirty = timezone(timedelta(hours=5, minutes=30))

    parsed = parse_time("2026-03-29T02:30+05:30", BERLIN, NOW)

    assert parsed == datetime(2026, 3, 29, 2, 30, tzinfo=plus_five_thirty)
    assert parsed == utc(2026, 3, 28, 21, 0)


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("start-60m", "start-1h"),
        ("start-90m", "start-1h30m"),
        ("START-1440m", "start-1d"),
        ("start-" + "1s" * 20, "start-20s"),
        ("end-10m", "end-10m"),
    ],
)
def test_offset_kinds_get_one_canonical_name(given: str, canonical: str) -> None:
    assert parse_kind(given).name == canonical
