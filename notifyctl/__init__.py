"""notifyctl: booking reminders from cron.

The use cases the CLI calls are importable from here (loaded on first use,
so ``notifyctl dispatch`` with nothing due stays cheap)::

    from notifyctl import open_store, create_booking, cancel
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "open_store": "service",
    "Store": "service",
    "create_booking": "service",
    "create_bookings": "service",
    "booking_input": "service",
    "BookingFields": "service",
    "cancel": "service",
    "list_notifications": "service",
    "summary": "service",
    "ListFilter": "queries",
    "Dispatcher": "dispatch",
    "DispatchOptions": "dispatch",
    "Settings": "config",
    "NotifyctlError": "errors",
}

__all__ = [
    "BookingFields",
    "DispatchOptions",
    "Dispatcher",
    "ListFilter",
    "NotifyctlError",
    "Settings",
    "Store",
    "booking_input",
    "cancel",
    "create_booking",
    "create_bookings",
    "list_notifications",
    "open_store",
    "summary",
]

if TYPE_CHECKING:
    from .config import Settings
    from .dispatch import Dispatcher, DispatchOptions
    from .errors import NotifyctlError
    from .queries import ListFilter
    from .service import (
        BookingFields,
        Store,
        booking_input,
        cancel,
        create_booking,
        create_bookings,
        list_notifications,
        open_store,
        summary,
    )


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'notifyctl' has no attribute {name!r}")
