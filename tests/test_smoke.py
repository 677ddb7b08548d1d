from __future__ import annotations

from tests.support import Cli


def test_create_then_list_shows_the_reminders(cli: Cli) -> None:
    cli.ok("create", "b1", "--starts-at", "+2h", "--ends-at", "+3h", "--to", "console:a")
    result = cli.ok("list", "--format", "csv")
    assert result.stdout.count("\n") == 5
