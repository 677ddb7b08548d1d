"""``apprise:URL``: Apprise services (Slack, Discord, SMS, …), an optional extra.

Apprise is imported only inside these functions, so nothing pays for it unless
an ``apprise:`` recipient is created, due or shown. Apprise reports only
success or failure, so every failure is a retry with backoff (SPEC §6).
Apprise URLs carry tokens in every part: errors and listings show Apprise's
own privacy-masked URL, never the URL itself.

Apprise URLs come from end users (SPEC §14), and Apprise can do far more than
post a message to a public API: several services post to any host named in
the URL, some URL parameters read a local file or fetch a URL and send it on,
choose the HTTP method, add headers or payload fields, turn off certificate
checks or set timeouts. So only the services in ``NOTIFYCTL_APPRISE_SCHEMES``
are accepted (a safe default below), and those parameters are refused at
``create`` and again before each send.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from types import ModuleType
from typing import Any
from urllib.parse import unquote

from ..config import REDACTED, Settings, redact, url_password
from ..errors import ConfigError
from .base import ChannelContext, Message, SendResult, TextFormat

MISSING_EXTRA = "apprise: recipients need the optional extra: pip install 'notifyctl[apprise]'"
_MAX_ERROR = 500
_load_lock = threading.Lock()
_plugins_loaded = False

#: Services whose plugin talks only to the provider's fixed public API (the
#: host is part of the plugin, never of the URL) and reads no local file:
#: Slack, Discord, Microsoft Teams (Apprise 1.x), Telegram, Pushover,
#: Pushbullet, Google Chat, PagerDuty, Opsgenie, Prowl, Pushsafer (https),
#: Twilio, IFTTT, Join, LINE. Left out on purpose: services whose URL names
#: the server (json/xml/form, mailto/mailtos, ntfy, gotify, matrix,
#: mattermost, rocket.chat, signal, apprise API, workflows, bark, …): an end
#: user could point them at an address inside the host; desktop and local
#: services (dbus, windows, macosx, syslog, …) act on the host itself.
#: An operator who needs one of those names it in NOTIFYCTL_APPRISE_SCHEMES.
DEFAULT_SCHEMES = (
    "slack",
    "discord",
    "msteams",
    "tgram",
    "pover",
    "pbul",
    "gchat",
    "pagerduty",
    "opsgenie",
    "prowl",
    "psafers",
    "twilio",
    "ifttt",
    "join",
    "line",
)

#: URL parameters refused whatever the service (names as Apprise 1.x/2.x spell them)
_REFUSED_PARAMETERS = {
    # read a local file or fetch a URL and send its content on
    "attach": "reads a file or URL",
    "attach-as": "reads a file or URL",
    "template": "reads a file or URL",
    "keyfile": "reads a file",
    "subfile": "reads a file",
    "pgp": "reads key files",
    "pgpkey": "reads a file",
    "pgpprv": "reads a file",
    "pgppub": "reads a file",
    "avatar_url": "makes a URL fetched",
    "icon_url": "makes a URL fetched",
    "image_url": "makes a URL fetched",
    "image_href": "makes a URL fetched",
    "sound_href": "makes a URL fetched",
    "file_url": "makes a URL fetched",
    # send to another server than the service's own
    "webhook": "names another server",
    "callback": "names another server",
    "callbackurl": "names another server",
    "endpoint": "names another server",
    "relay": "names another server",
    "smtp": "names another server",
    "url_prefix": "names another server",
    # change the request
    "method": "changes the HTTP method",
    "verify": "changes certificate checks",
    "redirect": "changes how redirects are followed",
    # time: notifyctl's send deadline decides
    "cto": "sets a timeout",
    "rto": "sets a timeout",
    "timeout": "sets a timeout",
    "retry": "sets retries",
    "wait": "sets a wait",
    "delay": "sets a wait",
}
#: a value naming a URL or a local path (a parameter that reads or fetches it)
_URL_OR_PATH = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:/|[a-z]:\\|[/\\~]|\.\.?[/\\]|file:)", re.I)
_SAFE_KEY = re.compile(r"[a-z0-9_.-]{1,32}")


def _apprise() -> ModuleType:
    """The apprise module with its plugins loaded; ``ImportError`` without the extra.

    Apprise imports its plugins on first use, and some of them import
    deprecated stdlib modules: those DeprecationWarnings are Apprise's, not
    our users', so they are silenced for that one load.
    """
    global _plugins_loaded
    with _load_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import apprise

        if not _plugins_loaded:
            apprise.Apprise().add("json://localhost")  # no network: parses, loads plugins
            _plugins_loaded = True
    return apprise


def allowed_schemes(text: str | None) -> frozenset[str]:
    """``NOTIFYCTL_APPRISE_SCHEMES`` (a comma list), or the default set."""
    names = [n.strip().lower().removesuffix("://") for n in (text or "").split(",")]
    chosen = frozenset(n for n in names if n)
    return chosen or frozenset(DEFAULT_SCHEMES)


def check_parameters(address: str) -> None:
    """``ValueError`` for a URL parameter that reads, fetches, redirects or re-times.

    Parameters are read the way Apprise reads them: everything after the
    first ``?``, split at ``&`` and ``;``; a leading ``+``, ``-`` or ``:``
    sets a header, a request parameter or a payload field.
    """
    _, sep, query = address.partition("?")
    if not sep:
        return
    for pair in (p for part in query.split("&") for p in part.split(";")):
        raw_key, _, raw_value = pair.partition("=")
        key = unquote(raw_key)
        if not key.strip():
            continue
        if key[0] in "+ -:":
            raise ValueError(
                "Apprise URL parameters starting with +, - or : (HTTP headers, request "
                "parameters, payload fields) are not accepted"
            )
        name = key.strip().lower()
        shown = repr(name) if _SAFE_KEY.fullmatch(name) else "a parameter"
        reason = _REFUSED_PARAMETERS.get(name)
        if reason:
            raise ValueError(f"the Apprise URL parameter {shown} {reason}: not accepted")
        if _URL_OR_PATH.match(unquote(raw_value)):
            raise ValueError(
                f"the Apprise URL parameter {shown} names a URL or a file: not accepted"
            )


def _scheme(address: str) -> str:
    scheme, sep, _ = address.partition("://")
    return scheme.lower() if sep else ""


def _service_schemes(service: Any) -> set[str]:
    names: set[str] = set()
    for attr in ("protocol", "secure_protocol"):
        value = getattr(service, attr, None)
        for name in (value,) if isinstance(value, str) else (value or ()):
            if isinstance(name, str):
                names.add(name.lower())
    return names


def check_address(address: str, schemes: frozenset[str], apprise: ModuleType) -> Any:
    """An ``Apprise`` holding the one service of ``address``, else ``ValueError``.

    Nothing is sent, read or fetched: parameters are checked before Apprise
    builds the service.
    """
    if not address or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in address):
        raise ValueError("an Apprise URL may not be empty or contain spaces")
    scheme = _scheme(address)
    if not scheme:
        raise ValueError("an Apprise URL starts with a service, e.g. slack://")
    native = scheme in ("http", "https")  # e.g. a Discord webhook's own https URL
    if not native and scheme not in schemes:
        raise ValueError(_scheme_refused(scheme))
    check_parameters(address)
    notifier = apprise.Apprise(asset=_asset(apprise))
    if not notifier.add(address) or len(notifier) != 1:
        raise ValueError(
            "Apprise does not accept this URL (see https://github.com/caronc/apprise/wiki)"
        )
    if not _service_schemes(notifier[0]) & schemes:
        raise ValueError(_scheme_refused(scheme))
    return notifier


def _scheme_refused(scheme: str) -> str:
    shown = f"{scheme!r} " if _SAFE_KEY.fullmatch(scheme) else ""
    return (
        f"the Apprise service {shown}is not accepted "
        "(the operator allows services in NOTIFYCTL_APPRISE_SCHEMES)"
    )


def validate(address: str) -> str:
    try:
        apprise = _apprise()
    except ImportError:
        raise ValueError(MISSING_EXTRA) from None
    check_address(address, allowed_schemes(os.environ.get("NOTIFYCTL_APPRISE_SCHEMES")), apprise)
    return address


def shown(address: str) -> str:
    """The address as output shows it: Apprise's privacy rendering, no tokens."""
    scheme = _scheme(address)
    try:
        check_parameters(address)  # nothing that reads a file gets built, even to show it
        apprise = _apprise()
        notifier = apprise.Apprise(asset=_asset(apprise))
        if scheme and notifier.add(address) and len(notifier) == 1:
            return _privacy_url(notifier[0])
    except Exception:  # unparseable, or Apprise missing: show only the scheme
        pass
    return f"{scheme}://{REDACTED}" if _SAFE_KEY.fullmatch(scheme) else REDACTED


def _asset(apprise: ModuleType) -> Any:
    """Apprise settings for notifyctl: no redirects followed (Apprise ≥ 2 knows this)."""
    asset = apprise.AppriseAsset()
    if hasattr(asset, "http_redirects"):
        asset.http_redirects = False
    return asset


def check_config(settings: Settings) -> None:
    try:
        _apprise()
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None


class AppriseChannel:
    text_format: TextFormat = "plain"
    pacing_key: str | None = None
    max_text_length: int | None = None
    parts: frozenset[str] = frozenset({"subject"})

    def __init__(self, context: ChannelContext) -> None:
        check_config(context.settings)
        self._apprise = _apprise()
        self._schemes = allowed_schemes(context.settings.apprise_schemes)
        self._deadline = context.send_deadline
        self._connect_timeout = context.connect_timeout
        self._read_timeout = context.read_timeout

    def send(self, message: Message) -> SendResult:
        apprise = self._apprise
        url = message.recipient
        redact.add([url_password(url)])
        try:
            # the rules may have narrowed since create: checked again, nothing sent yet
            notifier = check_address(url, self._schemes, apprise)
        except ValueError as e:
            return SendResult.failed(f"apprise: {e}")
        service = notifier[0]
        name = str(getattr(service, "service_name", None) or "Apprise")
        shown = _privacy_url(service)
        # no single wait may outlast the send's deadline
        for attr, limit in (
            ("socket_connect_timeout", self._connect_timeout),
            ("socket_read_timeout", self._read_timeout),
        ):
            current = getattr(service, attr, None)
            if isinstance(current, int | float):
                setattr(service, attr, min(current, limit, self._deadline))
        outcome: list[SendResult] = []
        worker = threading.Thread(
            target=self._notify,
            args=(notifier, message, name, shown, url, outcome),
            name="apprise-send",
            daemon=True,
        )
        worker.start()
        worker.join(self._deadline)
        if not outcome:
            # Apprise cannot be interrupted: the thread ends on its own timeouts,
            # and whatever it sent may have arrived
            error = f"apprise {name} ({shown}): no answer within the send deadline"
            return SendResult.retry(f"{error} ({self._deadline:g} s)", uncertain=True)
        return outcome[0]

    def _notify(
        self,
        notifier: Any,
        message: Message,
        name: str,
        shown: str,
        url: str,
        outcome: list[SendResult],
    ) -> None:
        apprise = self._apprise
        try:
            result = notifier.notify(
                body=message.text,
                title=message.subject or "",
                body_format=apprise.NotifyFormat.TEXT,
            )
        except Exception as e:  # a plugin that crashes must not crash the run
            error = f"apprise {name} ({shown}): {type(e).__name__}: {e}"
            outcome.append(SendResult.retry(_clean(error, url, shown)))
            return
        try:
            if result:
                outcome.append(SendResult.sent())
                return
            reasons = _reasons(result)
        finally:
            close = getattr(result, "close", None)
            if callable(close):
                close()
        error = f"apprise {name} ({shown}): notification failed"
        if reasons:
            error += ": " + reasons
        outcome.append(SendResult.retry(_clean(error, url, shown)))

    def close(self) -> None:
        """Apprise keeps no connection between notifications."""


def _privacy_url(service: Any) -> str:
    try:
        shown = str(service.url(privacy=True))
    except Exception:
        return REDACTED
    return shown.split("?", 1)[0]


def _reasons(result: object) -> str:
    """Apprise 2's captured warnings and errors for this call (1.x returns a bare bool)."""
    logs = getattr(result, "logs", None)
    if not callable(logs):
        return ""
    messages: list[str] = []
    for entry in logs():
        if getattr(entry, "level", "") in ("WARNING", "ERROR", "CRITICAL"):
            text = " ".join(str(getattr(entry, "message", "")).split())
            if text and text not in messages:
                messages.append(text)
    return "; ".join(messages)


def _clean(text: str, url: str, shown: str) -> str:
    return redact(text.replace(url, shown))[:_MAX_ERROR]


def open_channel(context: ChannelContext) -> AppriseChannel:
    return AppriseChannel(context)
