"""The fault campaign's judge (chaos/scenarios.py) on hand-made timelines.

Two ``create`` calls of one booking that run at the same time commit in an order
no one outside sees; the judge must accept either as the booking's times, and
only those (seed 406673 of the quick campaign once reported a true text as false
and its booking as lost because it took the later-returning create as the last). A
text checked against the store just before a create committed, and arriving just
after, was in flight (SPEC §5): true when it left.
"""

from __future__ import annotations

import math

from chaos.scenarios import BookingTruth, Version


def booking(*versions: Version) -> BookingTruth:
    return BookingTruth("c0001", "700000001", "hour_before", 3600.0, list(versions))


FIRST = Version(-math.inf, 0.0, 1000.0, 2000.0)


def test_creates_that_overlapped_may_each_be_the_last() -> None:
    a = Version(10.0, 11.5, 1031.0, 2031.0)
    b = Version(10.1, 11.6, 1032.0, 2032.0)  # began while a ran, returned just after it
    truth = booking(FIRST, a, b)

    assert truth.candidates(20.0) == [a, b]
    assert truth.finals() == [a, b]


def test_a_create_that_began_after_another_returned_replaces_it() -> None:
    a = Version(10.0, 11.0, 1031.0, 2031.0)
    b = Version(12.0, 13.0, 1032.0, 2032.0)
    truth = booking(FIRST, a, b)

    assert truth.candidates(20.0) == [b]
    assert truth.candidates(12.5) == [a, b]  # b in progress: either may be seen
    assert truth.candidates(11.5) == [a]
    assert truth.finals() == [b]


def test_a_text_checked_just_before_a_create_committed_is_in_flight_not_false() -> None:
    moved = Version(10.0, 11.0, 1031.0, 2031.0)
    truth = booking(FIRST, moved)

    assert truth.candidates(11.1) == [FIRST, moved]  # left before the commit, arrived after
    assert truth.candidates(12.0) == [moved]
