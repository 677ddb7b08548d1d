"""webhook: channel against a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email.utils
import hashlib
import hmac
import io
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from notifyctl.channels import parse_recipient
from notifyctl.channels import webhook as wh
from notifyctl.channels.base import ChannelContext, Delivery, Message, SendResult
from notifyctl.channels.netguard import JsonClient
from notifyctl.config import Settings
from notifyctl.errors import InvalidInput
from tests.fakes.http_receiver import Answer, HttpReceiver, closed_port

NOW = 1_700_000_000.0
SECRET = "whsec-test-0123456789"
PASSWORD = "pw-Sup3rSecret"
PATH_TOKEN = "T0KEN-in-the-path-abcdef"


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as rx:
        yield rx


def make_context(
    secret: str | None = None, allow: str | None = "127.0.0.1", **timeouts: float
) -> ChannelContext:
    """The receivers here listen on loopback, which webhooks reach only when allowed."""
    return ChannelContext(
        settings=Settings(database_url="sqlite://", webhook_secret=secret, webhook_allow=allow),
        stdout=io.StringIO(),
        **timeouts,
    )


@pytest.fixture
def channel() -> Iterator[wh.WebhookChannel]:
    ch = wh.open_channel(make_context(), now=lambda: NOW)
    yield ch
    ch.close()


@pytest.fixture
def signed_channel() -> Iterator[wh.WebhookChannel]:
    ch = wh.open_channel(make_context(SECRET), now=lambda: NOW)
    yield ch
    ch.close()


def make_message(url: str, notification_id: int = 42, **extra: Any) -> Message:
    payload = {
        "notification_id": notification_id,
        "booking_id": "B-1",
        "kind": "hour_before",
        "recipient": url,
        "title": "Yoga",
        "starts_at": "2025-03-30T16:00:00+00:00",
        "ends_at": "2025-03-30T17:00:00+00:00",
        "starts_at_local": "2025-03-30T18:00:00+02:00",
        "ends_at_local": "2025-03-30T19:00:00+02:00",
        "timezone": "Europe/Berlin",
        "data": {"room": "Studio 2", "name": "Zoë"},
    }
    payload.update(extra)
    return Message(
        notification_id=notification_id,
        booking_id="B-1",
        kind="hour_before",
        recipient=url,
        text='Reminder: "Yoga" starts in 1 hour at 18:00 (Europe/Berlin).',
        payload=payload,
    )


# --- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/notify",
        "http://reminders.internal:8080/hook?x=1",
        f"https://user:{PASSWORD}@hooks.example.com/{PATH_TOKEN}",
        "https://[2606:4700:4700::1111]:8443/hook",
        "https://203.0.114.7/hook",
    ],
)
def test_validate_accepts_http_and_https_urls_unchanged(url: str) -> None:
    assert wh.validate(url) == url


@pytest.mark.parametrize(
    "url",
    [
        f"ftp://user:{PASSWORD}@example.com/x",
        f"hooks.example.com/{PASSWORD}",
        f"file:///etc/{PASSWORD}",
        f"javascript:alert('{PASSWORD}')",
        "https://",
        f"https:///{PASSWORD}",
        f"https://user:{PASSWORD}@example.com:99999/x",
        f"https://user:{PASSWORD}@example.com:0/x",
        f"https://example.com/{PASSWORD} x",
        f"https://example.com/{PASSWORD}\n",
        "",
    ],
)
def test_validate_rejects_other_urls_without_echoing_them(url: str) -> None:
    with pytest.raises(ValueError, match="webhook") as info:
        wh.validate(url)
    assert PASSWORD not in str(info.value)


def test_registry_parses_webhook_recipients() -> None:
    assert parse_recipient("webhook:https://example.com/h") == ("webhook", "https://example.com/h")
    with pytest.raises(InvalidInput, match="https://"):
        parse_recipient("webhook:gopher://example.com/")


def test_check_config_needs_nothing() -> None:
    wh.check_config(Settings(database_url="sqlite://"))


def test_channel_shape() -> None:
    ch = wh.open_channel(make_context())
    try:
        assert (ch.text_format, ch.pacing_key, ch.max_text_length) == ("plain", None, None)
    finally:
        ch.close()


# --- delivery -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_sent(receiver: HttpReceiver, channel: wh.WebhookChannel, status: int) -> None:
    body = b"" if status == 204 else b"{}"
    receiver.script(Answer(status, body=body))
    result = channel.send(make_message(receiver.url()))
    assert result == SendResult.sent(None, status)


def test_posts_compact_sorted_json_with_idempotency_key(
    receiver: HttpReceiver, channel: wh.WebhookChannel
) -> None:
    message = make_message(receiver.url(), notification_id=7)
    assert channel.send(message).delivery is Delivery.SENT

    [request] = receiver.requests
    assert request.method == "POST"
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == "7"
    assert request.headers["user-agent"] == "notifyctl"
    assert "x-notifyctl-signature" not in request.headers
    assert "x-notifyctl-timestamp" not in request.headers
    document = request.json()
    assert document == {**message.payload, "text": message.text}
    assert (
        request.body
        == json.dumps(document, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    )


def test_the_same_notification_keeps_its_idempotency_key(
    receiver: HttpReceiver, channel: wh.WebhookChannel
) -> None:
    receiver.script(Answer(500))
    message = make_message(receiver.url(), notification_id=99)
    assert channel.send(message).delivery is Delivery.RETRY
    assert channel.send(message).delivery is Delivery.SENT
    assert [r.headers["idempotency-key"] for r in receiver.requests] == ["99", "99"]
    assert receiver.requests[0].body == receiver.requests[1].body


def test_signature_verifies_with_an_independent_hmac(
    receiver: HttpReceiver, signed_channel: wh.WebhookChannel
) -> None:
    assert signed_channel.send(make_message(receiver.url())).delivery is Delivery.SENT

    [request] = receiver.requests
    timestamp = request.headers["x-notifyctl-timestamp"]
    assert timestamp == str(int(NOW))
    url = receiver.url()
    expected = hmac.new(
        SECRET.encode(), f"{timestamp}.{url}.{request.body.decode()}".encode(), hashlib.sha256
    ).hexdigest()
    scheme, _, received = request.headers["x-notifyctl-signature"].partition("=")
    assert scheme == "sha256"
    assert hmac.compare_digest(received, expected)
    # a receiver rejects a forged body or a replayed timestamp
    forged = hmac.new(
        SECRET.encode(), f"{timestamp}.{url}.{request.body.decode()} ".encode(), hashlib.sha256
    ).hexdigest()
    replayed = hmac.new(
        SECRET.encode(),
        f"{int(NOW) - 3600}.{url}.{request.body.decode()}".encode(),
        hashlib.sha256,
    ).hexdigest()
    assert not hmac.compare_digest(received, forged)
    assert not hmac.compare_digest(received, replayed)


def test_signature_uses_the_injected_clock_on_each_send(receiver: HttpReceiver) -> None:
    ticks = iter([NOW, NOW + 61])
    ch = wh.open_channel(make_context(SECRET), now=lambda: next(ticks))
    try:
        ch.send(make_message(receiver.url()))
        ch.send(make_message(receiver.url()))
    finally:
        ch.close()
    stamps = [r.headers["x-notifyctl-timestamp"] for r in receiver.requests]
    assert stamps == [str(int(NOW)), str(int(NOW) + 61)]


def test_payload_datetimes_are_iso_and_body_has_no_url_password(
    receiver: HttpReceiver, channel: wh.WebhookChannel
) -> None:
    url = receiver.url(userinfo=f"svc:{PASSWORD}@")
    when = dt.datetime(2025, 3, 30, 16, 0, tzinfo=dt.UTC)
    assert channel.send(make_message(url, starts_at=when)).delivery is Delivery.SENT
    [request] = receiver.requests
    assert request.json()["starts_at"] == "2025-03-30T16:00:00+00:00"
    assert PASSWORD not in request.body.decode()
    # the credentials still authenticate the request
    expected = base64.b64encode(f"svc:{PASSWORD}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"


# --- outcome classes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after", "seconds"),
    [
        (429, "120", 120.0),
        (503, "7", 7.0),
        (429, "0", 1.0),  # clamped up to 1 s
        (429, "86400", 3600.0),  # clamped down to 1 h
        (503, email.utils.formatdate(NOW + 90, usegmt=True), 90.0),
        (429, email.utils.formatdate(NOW - 30, usegmt=True), 1.0),  # already past
        (503, email.utils.formatdate(NOW + 7 * 86400, usegmt=True), 3600.0),
    ],
)
def test_429_and_503_with_retry_after_wait_that_long(
    receiver: HttpReceiver,
    channel: wh.WebhookChannel,
    status: int,
    retry_after: str,
    seconds: float,
) -> None:
    receiver.script(Answer(status, {"Retry-After": retry_after}, b"slow down"))
    result = channel.send(make_message(receiver.url()))
    assert result.delivery is Delivery.RETRY_AFTER
    assert result.retry_after == pytest.approx(seconds, abs=1.0)
    assert result.http_status == status
    assert result.error == wh.status_line(status)  # never the body's text
    assert "slow down" not in (result.error or "")


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (429, {}),
        (503, {}),
        (503, {"Retry-After": "soon"}),
        (429, {"Retry-After": "Mon, 99 Foo 2025 25:61:00 GMT"}),
        (500, {}),
        (502, {"Retry-After": "5"}),  # only 429 and 503 carry a usable Retry-After
        (504, {}),
    ],
)
def test_other_5xx_and_unusable_retry_after_back_off(
    receiver: HttpReceiver, channel: wh.WebhookChannel, status: int, headers: dict[str, str]
) -> None:
    receiver.script(Answer(status, headers, b"<html>\n  <p>upstream\n trouble</p>\n</html>"))
    result = channel.send(make_message(receiver.url()))
    assert result.delivery is Delivery.RETRY
    assert result.http_status == status
    assert result.retry_after is None
    assert result.error == wh.status_line(status)
    assert "upstream" not in (result.error or "")


def test_410_gone_says_the_receiver_takes_nothing_more(
    receiver: HttpReceiver, channel: wh.WebhookChannel
) -> None:
    receiver.script(Answer(410, body=b'{"error":"gone"}'))
    result = channel.send(make_message(receiver.url()))
    assert result == SendResult.gone(wh.status_line(410), 410)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_other_4xx_fail_at_once(
    receiver: HttpReceiver, channel: wh.WebhookChannel, status: int
) -> None:
    receiver.script(Answer(status, body=b'{"error":"nope"}'))
    result = channel.send(make_message(receiver.url()))
    assert result == SendResult.failed(wh.status_line(status), status)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_not_followed_and_fail(
    receiver: HttpReceiver, channel: wh.WebhookChannel, status: int
) -> None:
    receiver.script(Answer(status, {"Location": receiver.url("/elsewhere")}, b""))
    result = channel.send(make_message(receiver.url()))
    assert result.delivery is Delivery.FAILED
    assert result.http_status == status
    assert "redirect" in (result.error or "")
    assert [r.path for r in receiver.requests] == ["/hook"]


def test_connection_refused_backs_off(channel: wh.WebhookChannel) -> None:
    result = channel.send(make_message(f"http://127.0.0.1:{closed_port()}/hook"))
    assert result.delivery is Delivery.RETRY
    assert result.http_status is None
    assert result.uncertain is False
    assert "ConnectionError" in (result.error or "")


def test_connect_timeout_backs_off_as_certain(receiver: HttpReceiver) -> None:
    # a listener whose accept queue is full: the handshake never completes
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        ch = wh.open_channel(make_context(connect_timeout=0.2, read_timeout=5))
        try:
            result = ch.send(make_message(f"http://127.0.0.1:{port}/hook"))
        finally:
            ch.close()
    assert result.delivery is Delivery.RETRY
    assert result.uncertain is False
    assert "ConnectTimeout" in (result.error or "")


def test_read_timeout_backs_off_as_uncertain(receiver: HttpReceiver) -> None:
    receiver.script(Answer(action="hang"))
    ch = wh.open_channel(make_context(connect_timeout=2, read_timeout=0.2))
    try:
        result = ch.send(make_message(receiver.url()))
    finally:
        ch.close()
    assert result.delivery is Delivery.RETRY
    assert result.uncertain is True
    assert "ReadTimeout" in (result.error or "")
    assert len(receiver.requests) == 1  # it did arrive: hence uncertain


def test_connection_dropped_after_the_request_backs_off_as_uncertain(
    receiver: HttpReceiver, channel: wh.WebhookChannel
) -> None:
    receiver.script(Answer(action="drop"))
    result = channel.send(make_message(receiver.url()))
    assert result.delivery is Delivery.RETRY
    assert result.uncertain is True
    # the next send opens a fresh connection
    assert channel.send(make_message(receiver.url())).delivery is Delivery.SENT


# --- secrets --------------------------------------------------------------------------


def test_url_credentials_and_path_tokens_never_appear_in_errors(receiver: HttpReceiver) -> None:
    userinfo = f"svc:{PASSWORD}@"
    path = f"/hooks/{PATH_TOKEN}?sig={PATH_TOKEN}"
    receiver.script(
        Answer(500, body=b"internal"),
        Answer(404, body=b"no such hook"),
        Answer(302, {"Location": f"http://{userinfo}127.0.0.1/{PATH_TOKEN}"}),
        Answer(429, {"Retry-After": "3"}),
        Answer(action="hang"),
        Answer(action="drop"),
    )
    ch = wh.open_channel(make_context(SECRET, read_timeout=0.2), now=lambda: NOW)
    results: list[SendResult] = []
    try:
        for _ in range(6):
            results.append(ch.send(make_message(receiver.url(path, userinfo))))
        results.append(ch.send(make_message(f"http://{userinfo}127.0.0.1:{closed_port()}{path}")))
        results.append(ch.send(make_message(f"http://{userinfo}bad host{path}")))
    finally:
        ch.close()
    assert [r.delivery for r in results] == [
        Delivery.RETRY,
        Delivery.FAILED,
        Delivery.FAILED,
        Delivery.RETRY_AFTER,
        Delivery.RETRY,
        Delivery.RETRY,
        Delivery.RETRY,
        Delivery.FAILED,
    ]
    for result in results:
        assert result.error
        for secret in (PASSWORD, PATH_TOKEN, SECRET):
            assert secret not in result.error, result.error


def test_a_shared_client_is_never_used_for_end_user_urls(receiver: HttpReceiver) -> None:
    # the Bot API client would skip the address check and use the operator's proxy
    seen: list[str] = []

    class Recording(JsonClient):
        def post_json(self, url: str, body: dict[str, Any], **kw: float) -> tuple[int, bytes]:
            seen.append(url)
            return super().post_json(url, body, **kw)

    context = ChannelContext(
        settings=Settings(database_url="sqlite://", webhook_allow="127.0.0.1"),
        stdout=io.StringIO(),
        http_client=Recording(),
    )
    with context.http_client as client:
        ch = wh.open_channel(context)
        assert ch.send(make_message(receiver.url())).delivery is Delivery.SENT
        ch.close()
        assert seen == []
        # still usable after the channel closed
        status, _ = client.post_json(receiver.url(), {}, connect_timeout=5, read_timeout=5)
        assert status == 200


def test_the_bot_api_client_keeps_one_connection_and_closes_it_when_closed(
    receiver: HttpReceiver,
) -> None:
    url = receiver.url("/bot123:abc/sendMessage?x=1")
    client = JsonClient()
    for n in (1, 2):
        assert client.post_json(url, {"n": n}, connect_timeout=5, read_timeout=5)[0] == 200
    pool = client._manager.connection_from_url(url)
    [kept] = [c for c in pool.pool.queue if c is not None]  # both posts went over it
    assert kept.sock is not None

    client.close()  # not left to garbage collection: urllib3's manager only forgets its pools

    assert kept.sock is None
    assert [(r.path, r.json()) for r in receiver.requests] == [
        ("/bot123:abc/sendMessage?x=1", {"n": 1}),
        ("/bot123:abc/sendMessage?x=1", {"n": 2}),
    ]


# --- pure helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("abc", None),
        ("nan", None),
        ("inf", None),
        ("-5", 1.0),
        ("2.5", 2.5),
        ("  30 ", 30.0),
        (email.utils.formatdate(NOW + 600, usegmt=True), 600.0),
        ("Tue, 14 Nov 2023 22:23:20 -0000", 600.0),  # no zone given: UTC
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert wh.parse_retry_after(value, NOW) == expected


def test_sign_matches_the_documented_format() -> None:
    body = b'{"a":1}'
    url = "https://hooks.example.com/h"
    signed = b'1700000000.https://hooks.example.com/h.{"a":1}'
    digest = hmac.new(b"k3y!", signed, hashlib.sha256).hexdigest()
    assert wh.sign("k3y!", 1_700_000_000, url, body) == f"sha256={digest}"
    # bound to the receiver: the same body for another URL has another signature
    assert wh.sign("k3y!", 1_700_000_000, url + "2", body) != f"sha256={digest}"
