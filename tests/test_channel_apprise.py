"""apprise: channel through Apprise's json:// service to a real HTTP receiver.

json:// posts to any host its URL names, so it is not among the default
services: these tests opt in, as an operator would (NOTIFYCTL_APPRISE_SCHEMES).
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator

import pytest

from notifyctl.channels import apprise_channel as ap
from notifyctl.channels import parse_recipient
from notifyctl.channels.base import ChannelContext, Delivery, Message, SendResult
from notifyctl.config import Settings
from notifyctl.errors import ConfigError, InvalidInput
from tests.fakes.http_receiver import Answer, HttpReceiver, closed_port

PASSWORD = "apprise-Secr3t-pw"
SCHEMES = "json,slack,discord"


@pytest.fixture(autouse=True)
def operator_allows_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFYCTL_APPRISE_SCHEMES", SCHEMES)


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as rx:
        yield rx


@pytest.fixture
def channel() -> Iterator[ap.AppriseChannel]:
    ch = ap.open_channel(
        ChannelContext(
            settings=Settings(database_url="sqlite://", apprise_schemes=SCHEMES),
            stdout=io.StringIO(),
        )
    )
    yield ch
    ch.close()


@pytest.fixture
def without_apprise(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the optional extra were not installed."""
    monkeypatch.setitem(sys.modules, "apprise", None)  # `import apprise` raises ImportError


def json_url(receiver: HttpReceiver, userinfo: str = "", path: str = "/notify") -> str:
    return f"json://{userinfo}127.0.0.1:{receiver.port}{path}"


def make_message(url: str, subject: str | None = "Yoga in 1 hour") -> Message:
    return Message(
        notification_id=5,
        booking_id="B-1",
        kind="hour_before",
        recipient=url,
        text='Reminder: "Yoga" starts in 1 hour at 18:00 <Studio 2>.',
        subject=subject,
    )


# --- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "json://127.0.0.1:8080/notify",
        f"json://user:{PASSWORD}@hooks.internal/x",
        "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ",
        "discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js",
    ],
)
def test_validate_accepts_urls_apprise_understands(url: str) -> None:
    assert ap.validate(url) == url


@pytest.mark.parametrize(
    "url",
    [
        f"nosuchservice://{PASSWORD}@example.com",
        f"{PASSWORD}",
        f"json://{PASSWORD} x@example.com",
        "",
    ],
)
def test_validate_rejects_what_apprise_does_not_accept_without_echoing_it(url: str) -> None:
    with pytest.raises(ValueError, match="Apprise") as info:
        ap.validate(url)
    assert PASSWORD not in str(info.value)


def test_registry_parses_apprise_recipients() -> None:
    assert parse_recipient("apprise:json://example.com/x") == ("apprise", "json://example.com/x")
    with pytest.raises(InvalidInput, match="Apprise"):
        parse_recipient("apprise:nosuchservice://x")


@pytest.mark.usefixtures("without_apprise")
def test_without_the_extra_recipients_are_rejected_with_the_install_hint() -> None:
    with pytest.raises(ValueError, match=r"pip install 'notifyctl\[apprise\]'") as info:
        ap.validate("json://example.com/x")
    assert str(info.value) == ap.MISSING_EXTRA
    with pytest.raises(InvalidInput, match=r"notifyctl\[apprise\]"):
        parse_recipient("apprise:json://example.com/x")
    with pytest.raises(ConfigError, match=r"notifyctl\[apprise\]"):
        ap.check_config(Settings(database_url="sqlite://"))


def test_importing_the_channel_does_not_import_apprise() -> None:
    code = (
        "import sys, notifyctl.channels.apprise_channel; "
        "assert 'apprise' not in sys.modules, 'apprise imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_channel_shape(channel: ap.AppriseChannel) -> None:
    assert (channel.text_format, channel.pacing_key, channel.max_text_length) == (
        "plain",
        None,
        None,
    )


# --- delivery -------------------------------------------------------------------------


def test_a_successful_notification_is_sent(
    receiver: HttpReceiver, channel: ap.AppriseChannel
) -> None:
    message = make_message(json_url(receiver))
    assert channel.send(message) == SendResult.sent()

    [request] = receiver.requests
    assert request.method == "POST"
    assert request.path == "/notify"
    document = request.json()
    assert document["title"] == "Yoga in 1 hour"
    assert document["message"] == message.text  # plain text, not interpreted


def test_no_subject_sends_an_empty_title(
    receiver: HttpReceiver, channel: ap.AppriseChannel
) -> None:
    assert channel.send(make_message(json_url(receiver), subject=None)).delivery is Delivery.SENT
    assert receiver.requests[0].json()["title"] == ""


@pytest.mark.parametrize("status", [400, 403, 404, 429, 500, 503])
def test_any_failure_backs_off(
    receiver: HttpReceiver, channel: ap.AppriseChannel, status: int
) -> None:
    receiver.script(Answer(status, body=b"nope"))
    result = channel.send(make_message(json_url(receiver)))
    assert result.delivery is Delivery.RETRY
    assert result.error is not None
    assert result.error.startswith("apprise JSON (json://127.0.0.1:")
    assert str(status) in result.error  # Apprise's own reason is kept


def test_connection_refused_backs_off(channel: ap.AppriseChannel) -> None:
    result = channel.send(make_message(f"json://127.0.0.1:{closed_port()}/notify"))
    assert result.delivery is Delivery.RETRY
    assert "connection" in (result.error or "").lower()


def test_url_credentials_never_appear_in_errors(
    receiver: HttpReceiver, channel: ap.AppriseChannel
) -> None:
    receiver.script(Answer(500, body=f"echo {PASSWORD}".encode()))
    results = [
        channel.send(make_message(json_url(receiver, f"user:{PASSWORD}@"))),
        channel.send(make_message(f"json://user:{PASSWORD}@127.0.0.1:{closed_port()}/n")),
    ]
    assert [r.delivery for r in results] == [Delivery.RETRY, Delivery.RETRY]
    for result in results:
        assert result.error
        assert PASSWORD not in result.error, result.error
    # the credentials were used for the request itself
    assert "authorization" in receiver.requests[0].headers
