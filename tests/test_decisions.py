"""Pure decisions of dispatch: backoff, jitter, retry/outcome rules, Bot API answers, texts.

No database, no network, no clock: every function here takes ``now`` and an
injected ``random.Random``.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from notifyctl.channels import telegram
from notifyctl.channels.base import Delivery, SendResult, TextFormat
from notifyctl.decisions import (
    Outcome,
    backoff_seconds,
    decide,
    decide_retry,
    jittered,
)
from notifyctl.models import Status
from notifyctl.runs import BACKOFF_CAP, DispatchOptions
from notifyctl.texts import (
    ELLIPSIS,
    Booking,
    Rendered,
    context,
    relative,
    render_reminder,
    truncate,
    visible_length,
)
from tests.fakes.telegram import (
    Reply,
    blocked_by_user,
    chat_not_found,
    error,
    migrated,
    too_many_requests,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")
OPTIONS = DispatchOptions()  # max_attempts 10, backoff_base 30


def berlin(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    """A Berlin wall-clock time as aware UTC."""
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN).astimezone(UTC)


# --- backoff_seconds ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [
        (1, 30.0),
        (2, 60.0),
        (3, 120.0),
        (4, 240.0),
        (5, 480.0),
        (6, 960.0),
        (7, 1920.0),
        (8, 3600.0),  # 3840 capped
        (9, 3600.0),
        (10, 3600.0),
        (100, 3600.0),
        (1000, 3600.0),  # the most --max-attempts allows
    ],
)
def test_backoff_doubles_from_base_and_caps_at_one_hour(attempt: int, expected: float) -> None:
    assert backoff_seconds(attempt, 30.0) == expected
    assert isinstance(backoff_seconds(attempt, 30.0), float)


def test_backoff_huge_attempt_counts_do_not_overflow() -> None:
    assert backoff_seconds(10_000, 30.0) == 3600.0


def test_backoff_cap_is_one_hour() -> None:
    assert BACKOFF_CAP == 3600.0


@pytest.mark.parametrize(("attempt", "expected"), [(0, 5.0), (1, 5.0), (2, 10.0), (5, 60.0)])
def test_backoff_takes_any_base_and_cap(attempt: int, expected: float) -> None:
    assert backoff_seconds(attempt, 5.0, cap=60.0) == expected


# --- jittered ----------------------------------------------------------------------------


def test_jitter_stays_within_twenty_percent_and_spreads() -> None:
    rng = random.Random(20260601)
    samples = [jittered(100.0, rng) for _ in range(5000)]
    assert all(80.0 <= s <= 120.0 for s in samples)
    assert min(samples) < 81.0  # the whole band is used, not a constant factor
    assert max(samples) > 119.0
    assert 98.0 < sum(samples) / len(samples) < 102.0


def test_jitter_is_reproducible_from_the_seed() -> None:
    first = [jittered(30.0, random.Random(7)) for _ in range(3)]
    again = [jittered(30.0, random.Random(7)) for _ in range(3)]
    other = jittered(30.0, random.Random(8))
    assert first == again
    assert other != first[0]


# --- decide_retry -----------------------------------------------------------------------


def test_decide_retry_schedules_the_jittered_backoff() -> None:
    not_after = NOW + timedelta(days=1)
    outcome = decide_retry(3, NOW, not_after, OPTIONS, random.Random(5), "502: Bad Gateway")
    expected_at = NOW + timedelta(seconds=jittered(backoff_seconds(3, 30.0), random.Random(5)))
    assert outcome == Outcome.retry(expected_at, "502: Bad Gateway")
    assert outcome.status is Status.PENDING
    assert outcome.action == "retried"
    assert outcome.give_back_attempt is False
    assert outcome.due_at is not None
    assert NOW + timedelta(seconds=96) <= outcome.due_at <= NOW + timedelta(seconds=144)


@pytest.mark.parametrize("seed", range(20))
def test_decide_retry_due_at_within_jitter_bounds(seed: int) -> None:
    outcome = decide_retry(1, NOW, NOW + timedelta(hours=1), OPTIONS, random.Random(seed), "x")
    assert outcome.status is Status.PENDING
    assert outcome.due_at is not None
    assert NOW + timedelta(seconds=24) <= outcome.due_at <= NOW + timedelta(seconds=36)


@pytest.mark.parametrize(("attempts", "max_attempts"), [(10, 10), (11, 10), (3, 3), (1, 1)])
def test_decide_retry_fails_when_attempts_are_spent(attempts: int, max_attempts: int) -> None:
    options = DispatchOptions(max_attempts=max_attempts)
    outcome = decide_retry(
        attempts, NOW, NOW + timedelta(days=1), options, random.Random(1), "500: oops"
    )
    assert outcome.status is Status.FAILED
    assert outcome.action == "failed"
    assert outcome.due_at is None
    assert outcome.error is not None
    assert f"after {attempts} attempts" in outcome.error
    assert "500: oops" in outcome.error


def test_decide_retry_one_attempt_short_of_max_still_retries() -> None:
    outcome = decide_retry(9, NOW, NOW + timedelta(days=1), OPTIONS, random.Random(1), "x")
    assert outcome.status is Status.PENDING


def test_decide_retry_expires_when_the_retry_would_land_after_not_after() -> None:
    # attempt 1 → 24..36 s; the reminder is useless after 20 s
    outcome = decide_retry(
        1, NOW, NOW + timedelta(seconds=20), OPTIONS, random.Random(1), "502: Bad Gateway"
    )
    assert outcome.status is Status.EXPIRED
    assert outcome.action == "expired"
    assert outcome.error is not None
    assert "too late" in outcome.error
    assert "502: Bad Gateway" in outcome.error


def test_decide_retry_retries_when_the_retry_lands_before_not_after() -> None:
    outcome = decide_retry(1, NOW, NOW + timedelta(seconds=37), OPTIONS, random.Random(1), "x")
    assert outcome.status is Status.PENDING


# --- decide: every Delivery class -------------------------------------------------------


def _decide(result: SendResult, *, attempts: int = 1, until: timedelta | None = None) -> Outcome:
    not_after = NOW + (until if until is not None else timedelta(hours=1))
    return decide(result, attempts, NOW, not_after, OPTIONS, random.Random(3))


def test_decide_sent() -> None:
    assert _decide(SendResult.sent("42", 200)) == Outcome.sent()
    assert Outcome.sent().status is Status.SENT


def test_decide_rate_limited_waits_retry_after_and_gives_the_attempt_back() -> None:
    outcome = _decide(SendResult.retry_after_seconds(7, "429: Too Many Requests", 429))
    assert outcome.status is Status.PENDING
    assert outcome.action == "rate_limited"
    assert outcome.due_at == NOW + timedelta(seconds=7)
    assert outcome.give_back_attempt is True


def test_decide_rate_limited_waits_at_least_one_second() -> None:
    outcome = _decide(SendResult.retry_after_seconds(0, "429", 429))
    assert outcome.due_at == NOW + timedelta(seconds=1)


def test_decide_rate_limited_past_not_after_expires() -> None:
    outcome = _decide(SendResult.retry_after_seconds(120, "429", 429), until=timedelta(seconds=60))
    assert outcome.status is Status.EXPIRED


def test_decide_moved_retries_at_once_at_the_new_chat_without_an_attempt() -> None:
    outcome = _decide(SendResult.moved("-1001234567890", "400: upgraded", 400))
    assert outcome.status is Status.PENDING
    assert outcome.action == "moved"
    assert outcome.moved_to == "-1001234567890"
    assert outcome.due_at == NOW
    assert outcome.give_back_attempt is True


def test_decide_moved_without_a_new_address_fails() -> None:
    result = SendResult(Delivery.MOVED, http_status=400, error="400: upgraded")
    assert _decide(result).status is Status.FAILED


def test_decide_retry_class_goes_through_backoff() -> None:
    outcome = _decide(SendResult.retry("502: Bad Gateway", 502), attempts=2)
    assert outcome.status is Status.PENDING
    assert outcome.action == "retried"
    assert outcome.give_back_attempt is False
    assert outcome.due_at is not None
    assert NOW + timedelta(seconds=48) <= outcome.due_at <= NOW + timedelta(seconds=72)


def test_decide_retry_class_out_of_attempts_fails() -> None:
    outcome = _decide(SendResult.retry("502", 502), attempts=OPTIONS.max_attempts)
    assert outcome.status is Status.FAILED


def test_decide_failed_is_final() -> None:
    outcome = _decide(SendResult.failed("403: Forbidden: bot was blocked by the user", 403))
    assert outcome == Outcome.failed("403: Forbidden: bot was blocked by the user")
    assert outcome.due_at is None


def test_decide_bad_credentials_gives_the_claim_back_untouched() -> None:
    # decide is total: a refused token releases the claim (attempt given back, due unchanged)
    outcome = _decide(SendResult.bad_credentials("401: Unauthorized", 401))
    assert outcome == Outcome.released(action="bad_credentials")
    assert outcome.status is Status.PENDING
    assert outcome.give_back_attempt
    assert outcome.due_at is None


# --- telegram.classify_response: every Bot API answer shape --------------------------


def _body(reply: Reply) -> dict[str, Any]:
    assert reply.body is not None
    parsed: dict[str, Any] = json.loads(reply.body)
    return parsed


def test_classify_ok_keeps_the_message_id() -> None:
    data = {"ok": True, "result": {"message_id": 4711, "chat": {"id": 1}, "text": "hi"}}
    result = telegram.classify_response(200, data)
    assert result == SendResult.sent("4711", 200)


def test_classify_ok_without_message_id() -> None:
    result = telegram.classify_response(200, {"ok": True, "result": True})
    assert result.delivery is Delivery.SENT
    assert result.provider_id is None


def test_classify_429_uses_retry_after() -> None:
    result = telegram.classify_response(429, _body(too_many_requests(17)))
    assert result.delivery is Delivery.RETRY_AFTER
    assert result.retry_after == 17.0
    assert result.http_status == 429
    assert result.error is not None
    assert result.error.startswith("429: Too Many Requests")


def test_classify_429_without_parameters_waits_one_second() -> None:
    result = telegram.classify_response(429, _body(error(429, "Too Many Requests")))
    assert result.delivery is Delivery.RETRY_AFTER
    assert result.retry_after == 1.0


def test_classify_migrate_to_chat_id() -> None:
    result = telegram.classify_response(400, _body(migrated(-1001234567890)))
    assert result.delivery is Delivery.MOVED
    assert result.moved_to == "-1001234567890"
    assert result.http_status == 400


@pytest.mark.parametrize(
    ("status", "reply", "delivery"),
    [
        (400, chat_not_found(), Delivery.GONE),
        (400, error(400, "Bad Request: can't parse entities"), Delivery.FAILED),
        (403, blocked_by_user(), Delivery.GONE),
        (403, error(403, "Forbidden: bot was kicked from the group chat"), Delivery.GONE),
        (403, error(403, "Forbidden: user is deactivated"), Delivery.GONE),
        (403, error(403, "Forbidden: bot can't initiate conversation with a user"), Delivery.GONE),
        (403, error(403, "Forbidden: not enough rights to send text messages"), Delivery.FAILED),
    ],
    ids=[
        "chat-not-found",
        "bad-entities",
        "blocked",
        "kicked",
        "deactivated",
        "cannot-initiate",
        "no-rights",
    ],
)
def test_classify_400_and_403_fail_at_once(status: int, reply: Reply, delivery: Delivery) -> None:
    """The answers SPEC §11 lists say the chat is gone (suppressed); others fail the message."""
    result = telegram.classify_response(status, _body(reply))
    assert result.delivery is delivery
    assert result.http_status == status
    assert result.error == f"{status}: {_body(reply)['description']}"


@pytest.mark.parametrize(
    ("status", "data"),
    [
        (401, {"ok": False, "error_code": 401, "description": "Unauthorized"}),
        (404, {"ok": False, "error_code": 404, "description": "Not Found"}),
        (401, None),
        (404, None),
    ],
    ids=["401-json", "404-json", "401-bare", "404-bare"],
)
def test_classify_401_and_404_are_bad_credentials(status: int, data: dict[str, Any] | None) -> None:
    result = telegram.classify_response(status, data)
    assert result.delivery is Delivery.BAD_CREDENTIALS
    assert result.http_status == status


@pytest.mark.parametrize(
    ("status", "data"),
    [
        (500, {"ok": False, "error_code": 500, "description": "Internal Server Error"}),
        (502, {"ok": False, "error_code": 502, "description": "Bad Gateway"}),
        (500, None),
        (502, None),
        (503, None),
        (504, None),
    ],
    ids=["500-json", "502-json", "500-bare", "502-bare", "503-bare", "504-bare"],
)
def test_classify_5xx_retries_with_backoff(status: int, data: dict[str, Any] | None) -> None:
    result = telegram.classify_response(status, data)
    assert result.delivery is Delivery.RETRY
    assert result.http_status == status
    assert result.error is not None
    assert result.error.startswith(str(status))
    assert result.uncertain is False


def test_classify_redacts_a_token_echoed_in_a_description() -> None:
    data = {"ok": False, "error_code": 400, "description": "bad url /bot987654:SECRETsecret/x"}
    result = telegram.classify_response(400, data)
    assert result.error is not None
    assert "SECRETsecret" not in result.error


# --- texts.relative ---------------------------------------------------------------------


def _local(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (_local(2026, 6, 1, 17, 20), "in 40 minutes, at 18:00"),
        (_local(2026, 6, 1, 17, 59), "in 1 minute, at 18:00"),
        (_local(2026, 6, 1, 18, 0), "now, at 18:00"),
        (_local(2026, 6, 1, 18, 5), "at 18:00"),
        (_local(2026, 6, 1, 9, 0), "today at 18:00"),
        (_local(2026, 5, 31, 18, 0), "tomorrow at 18:00"),
        (_local(2026, 5, 31, 23, 59), "tomorrow at 18:00"),
        (_local(2026, 5, 29, 12, 0), "on Monday at 18:00"),
        (_local(2026, 5, 20, 12, 0), "on 1 June 2026 at 18:00"),
    ],
)
def test_relative_words(now: datetime, expected: str) -> None:
    assert relative(_local(2026, 6, 1, 18, 0), now) == expected


def test_relative_after_midnight_within_90_minutes_counts_minutes() -> None:
    assert relative(_local(2026, 6, 2, 0, 30), _local(2026, 6, 1, 23, 30)) == (
        "in 60 minutes, at 00:30"
    )


def test_relative_early_next_morning_says_tomorrow() -> None:
    assert relative(_local(2026, 6, 2, 1, 0), _local(2026, 6, 1, 22, 0)) == "tomorrow at 01:00"


# --- built-in texts -----------------------------------------------------------------------


def _booking(
    starts_at: datetime,
    *,
    title: str = "Yoga",
    minutes: int = 60,
    zone: str = "Europe/Berlin",
) -> Booking:
    return Booking(
        booking_id="b1",
        title=title,
        starts_at=starts_at,
        ends_at=starts_at + timedelta(minutes=minutes),
        timezone=zone,
        locale=None,
        data={},
    )


def _text(
    booking: Booking,
    kind: str,
    now: datetime,
    *,
    text_format: TextFormat = telegram.TelegramChannel.text_format,
    max_length: int | None = telegram.MAX_TEXT_LENGTH,
) -> Rendered:
    variables = context(booking, kind, "12345", "telegram", now)
    return render_reminder(variables, text_format=text_format, max_length=max_length)


START = berlin(2026, 6, 2, 18, 0)  # 16:00 UTC


def test_day_before_on_time_says_tomorrow_with_local_time_and_zone() -> None:
    rendered = _text(_booking(START), "day_before", START - timedelta(hours=24))
    assert rendered.text == 'Reminder: "Yoga" starts tomorrow at 18:00 (Europe/Berlin).'
    assert rendered.text_format == "html"


@pytest.mark.parametrize(
    ("sent_at", "words"),
    [
        (berlin(2026, 6, 2, 0, 30), "today at 18:00"),
        (berlin(2026, 6, 2, 9, 0), "today at 18:00"),
        (berlin(2026, 6, 2, 17, 20), "in 40 minutes, at 18:00"),
    ],
    ids=["just-after-midnight", "morning", "40-minutes-before"],
)
def test_day_before_sent_late_on_the_day_never_says_tomorrow(sent_at: datetime, words: str) -> None:
    rendered = _text(_booking(START), "day_before", sent_at)
    assert "tomorrow" not in rendered.text
    assert rendered.text == f'Reminder: "Yoga" starts {words} (Europe/Berlin).'


def test_hour_before_counts_minutes_at_send_time() -> None:
    on_time = _text(_booking(START), "hour_before", START - timedelta(hours=1))
    late = _text(_booking(START), "hour_before", START - timedelta(minutes=25))
    assert on_time.text == 'Reminder: "Yoga" starts in 60 minutes, at 18:00 (Europe/Berlin).'
    assert late.text == 'Reminder: "Yoga" starts in 25 minutes, at 18:00 (Europe/Berlin).'


def test_at_start_and_before_end_texts() -> None:
    booking = _booking(START)
    at_start = _text(booking, "at_start", START)
    started = _text(booking, "at_start", START + timedelta(minutes=10))
    before_end = _text(booking, "before_end", START + timedelta(minutes=55))
    assert at_start.text == '"Yoga" starts now (18:00 Europe/Berlin).'
    assert started.text == '"Yoga" started at 18:00 (Europe/Berlin) and ends at 19:00.'
    assert before_end.text == '"Yoga" ends in 5 minutes, at 19:00 (Europe/Berlin).'


def test_other_zones_render_their_own_wall_clock() -> None:
    booking = _booking(START, zone="America/New_York")  # 16:00 UTC = 12:00 EDT
    rendered = _text(booking, "hour_before", START - timedelta(hours=1))
    assert rendered.text == 'Reminder: "Yoga" starts in 60 minutes, at 12:00 (America/New_York).'


# Bookings at 18:00 Berlin on each side of both 2026 switches (CET +01, CEST +02).
DST_BOOKINGS = [
    pytest.param(berlin(2026, 3, 28, 18, 0), "2026-03-28T17:00:00+00:00", id="sat-before-spring"),
    pytest.param(berlin(2026, 3, 29, 18, 0), "2026-03-29T16:00:00+00:00", id="sun-after-spring"),
    pytest.param(berlin(2026, 10, 24, 18, 0), "2026-10-24T16:00:00+00:00", id="sat-before-autumn"),
    pytest.param(berlin(2026, 10, 25, 18, 0), "2026-10-25T17:00:00+00:00", id="sun-after-autumn"),
]


@pytest.mark.parametrize(("start", "utc"), DST_BOOKINGS)
def test_local_time_is_right_on_both_sides_of_dst(start: datetime, utc: str) -> None:
    assert start.isoformat() == utc
    booking = _booking(start)
    day_before = _text(booking, "day_before", start - timedelta(hours=24))
    hour_before = _text(booking, "hour_before", start - timedelta(hours=1))
    assert day_before.text == 'Reminder: "Yoga" starts tomorrow at 18:00 (Europe/Berlin).'
    assert hour_before.text == 'Reminder: "Yoga" starts in 60 minutes, at 18:00 (Europe/Berlin).'


# Bookings right after each switch: the hour before it straddles the change.
ACROSS_SWITCH = [
    # 2026-03-29 03:30 CEST = 01:30 UTC; one hour before is 01:30 CET (wall clock 2 h earlier)
    pytest.param(datetime(2026, 3, 29, 1, 30, tzinfo=UTC), "03:30", id="spring-forward"),
    # 2026-10-25 02:30 CET = 01:30 UTC; one hour before is 02:30 CEST (same wall clock)
    pytest.param(datetime(2026, 10, 25, 1, 30, tzinfo=UTC), "02:30", id="fall-back"),
]


@pytest.mark.parametrize(("start", "clock"), ACROSS_SWITCH)
def test_hour_before_across_a_dst_switch_counts_real_minutes(start: datetime, clock: str) -> None:
    rendered = _text(_booking(start), "hour_before", start - timedelta(hours=1))
    assert rendered.text == f'Reminder: "Yoga" starts in 60 minutes, at {clock} (Europe/Berlin).'


def test_html_in_titles_is_escaped_for_telegram() -> None:
    rendered = _text(_booking(START, title="<b>&</b>"), "day_before", START - timedelta(hours=24))
    assert rendered.text_format == "html"
    assert "&lt;b&gt;&amp;&lt;/b&gt;" in rendered.text
    assert "<b>" not in rendered.text
    assert "<" not in rendered.text  # the built-in text has no markup of its own


def test_plain_channels_get_the_title_unescaped() -> None:
    rendered = _text(
        _booking(START, title="<b>&</b>"),
        "day_before",
        START - timedelta(hours=24),
        text_format="plain",
        max_length=None,
    )
    assert rendered.text == 'Reminder: "<b>&</b>" starts tomorrow at 18:00 (Europe/Berlin).'


def test_unicode_titles_arrive_intact() -> None:
    title = "Café Zürich — 瑜伽 🧘‍♀️ ñ"
    rendered = _text(_booking(START, title=title), "day_before", START - timedelta(hours=24))
    assert f'"{title}"' in rendered.text


@pytest.mark.parametrize(
    "title",
    ["x" * 5000, "&" * 5000, "😀" * 3000, "a" + "😀" * 2100],
    ids=["ascii", "escaped-entities", "astral", "odd-offset-astral"],
)
def test_huge_text_is_cut_to_4096_utf16_units_as_plain_text(title: str) -> None:
    rendered = _text(_booking(START, title=title), "day_before", START - timedelta(hours=24))
    assert rendered.text_format == "plain"
    assert rendered.text.endswith(ELLIPSIS)
    units = len(rendered.text.encode("utf-16-le")) // 2  # strict: fails on a lone surrogate
    assert 4090 <= units <= telegram.MAX_TEXT_LENGTH
    assert rendered.text.startswith(f'Reminder: "{title[:20]}')  # unescaped: plain text


def test_text_at_the_limit_is_not_cut() -> None:
    exact = "y" * 4096
    assert truncate(exact, 4096) == exact
    assert truncate(exact + "z", 4096) == "y" * 4095 + ELLIPSIS


def test_truncate_never_splits_a_surrogate_pair() -> None:
    assert truncate("😀😀😀", 4) == "😀" + ELLIPSIS
    assert truncate("a😀😀", 4) == "a😀" + ELLIPSIS


def test_visible_length_counts_what_telegram_shows() -> None:
    assert visible_length("&lt;b&gt;", "html") == 3
    assert visible_length("<b>x</b>", "html") == 1
    assert visible_length("😀", "plain") == 2
