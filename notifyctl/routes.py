"""Chains of alternatives (SPEC §11): ``--to "123456789|email:ann@example.com"``.

A reminder goes to one *route*: one recipient, or several alternatives tried
in turn. The route is stored as its canonical text (``notifications.route``,
the reminder's identity within its booking and kind) and the reminder keeps
the position of the alternative in use. Pure functions: no database here.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from .channels import parse_recipient, shown_recipient, suppression_key
from .errors import InvalidInput
from .models import ROUTE_LENGTH

Address = tuple[str, str]  # (channel, address), as ``channels.parse_recipient`` gives
Route = tuple[Address, ...]

SEPARATOR = "|"


def route_text(route: Route) -> str:
    """The canonical text of a route: ``channel:address`` of each alternative, ``|`` between."""
    return SEPARATOR.join(f"{channel}:{address}" for channel, address in route)


def alternatives(text: str) -> Route:
    """The alternatives of a stored route (an address never holds ``|``: create splits on it)."""
    found: list[Address] = []
    for part in text.split(SEPARATOR):
        channel, _, address = part.partition(":")
        found.append((channel, address))
    return tuple(found)


def has_next(text: str, alternative: int) -> bool:
    return alternative + 1 < text.count(SEPARATOR) + 1


def parse_route(raw: str) -> Route:
    """A ``--to`` value: one recipient, or alternatives separated by ``|`` (exit 2 if invalid)."""
    route = tuple(parse_recipient(part) for part in raw.split(SEPARATOR))
    if len(set(route)) < len(route):
        raise InvalidInput(f"recipient chain {shown_route(route)!r} names one alternative twice")
    if len(route_text(route)) > ROUTE_LENGTH:
        raise InvalidInput(f"recipient chain is longer than {ROUTE_LENGTH} characters")
    return route


def shown_address(address: Address) -> str:
    channel, where = address
    return f"{channel}:{shown_recipient(where)}"


def shown_route(route: Route) -> str:
    """A route as output shows it: ``channel:address`` of each alternative, ``|`` between."""
    return SEPARATOR.join(shown_address(address) for address in route)


def health_key(address: Address) -> Address:
    """The recipient a suppression is about (a Telegram chat, whichever topic)."""
    channel, where = address
    return channel, suppression_key(channel, where)


class Suppressed:
    """The suppressed recipients among some addresses (by ``health_key``)."""

    def __init__(self, keys: Iterable[Address] = ()) -> None:
        self.keys = set(keys)

    def __contains__(self, address: object) -> bool:
        # none suppressed (the usual case) needs no key: a bulk create asks for every address
        return bool(self.keys) and isinstance(address, tuple) and health_key(address) in self.keys


def first_available(
    route: Route, suppressed: Container[Address], start: int = 0
) -> tuple[int, Address] | None:
    """The first alternative from ``start`` on that is not suppressed, with its position."""
    for position in range(start, len(route)):
        if route[position] not in suppressed:
            return position, route[position]
    return None


def health_keys(routes: Iterable[Route]) -> set[Address]:
    """What to look up to know which alternatives of these routes are suppressed."""
    return {health_key(address) for route in routes for address in route}
