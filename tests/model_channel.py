"""A scripted provider at the channel boundary, for the model-based test (tests/test_model.py).

Registered as channel ``model`` (``CHANNELS["model"] = "tests.model_channel:ModelChannel"``)
only while that test runs. Every ``send`` asks ``provider`` (installed by the
test's state machine) what the provider answers; the module itself knows no
database and keeps no state besides that hook.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from notifyctl.channels.base import ChannelContext, Message, SendResult, TextFormat
from notifyctl.config import Settings

#: the shared rate limit every model message is sent under (so pacing waits happen)
PACING_KEY = "model-bot"
_ADDRESS = re.compile(r"[a-z][a-z0-9.]{0,31}")

#: what the provider does with one message; the state machine installs it
provider: Callable[[Message], SendResult] | None = None


def validate(address: str) -> str:
    if not _ADDRESS.fullmatch(address):
        raise ValueError("a model address is a lowercase name such as 'a' or 'a.1'")
    return address


def check_config(settings: Settings) -> None:
    """Nothing to configure."""


class ModelChannel:
    text_format: TextFormat = "plain"
    pacing_key: str | None = PACING_KEY
    max_text_length: int | None = None
    parts: frozenset[str] = frozenset()

    def send(self, message: Message) -> SendResult:
        if provider is None:
            raise RuntimeError("no model provider installed")
        return provider(message)

    def close(self) -> None:
        return None


def open_channel(context: ChannelContext) -> ModelChannel:
    return ModelChannel()
