"""crontab.example: both styles do what they say (mail on output; syslog keeping the status)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DISPATCH = re.compile(r"^#?\s*\* \* \* \* \*\s+(?P<command>.*notifyctl dispatch.*)$")


def dispatch_lines() -> list[str]:
    text = (REPO / "crontab.example").read_text(encoding="utf-8")
    return [m["command"] for line in text.splitlines() if (m := DISPATCH.match(line))]


def run_line(command: str, tmp_path: Path) -> tuple[int, str, str]:
    """One crontab command against an unmigrated store (dispatch exits 4), under bash."""
    data = tmp_path / "data"
    data.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "syslog"
    logger = bin_dir / "logger"
    logger.write_text(
        f'#!/bin/sh\n{{ echo "args: $*"; [ -t 0 ] || cat; }} >> {log}\n', encoding="utf-8"
    )
    logger.chmod(0o755)
    wrapper = bin_dir / "notifyctl"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m notifyctl "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    command = command.replace("/var/lib/notifyctl", str(data)).replace(
        "/opt/notifyctl/venv/bin/notifyctl", str(wrapper)
    )
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "NOTIFYCTL_DATABASE_URL": f"sqlite:///{data / 'missing.db'}",
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        ["/bin/bash", "-c", command], env=env, capture_output=True, text=True, timeout=60
    )
    logged = log.read_text(encoding="utf-8") if log.exists() else ""
    return done.returncode, done.stdout + done.stderr, logged


def test_crontab_example_has_one_dispatch_line_per_style() -> None:
    lines = dispatch_lines()

    assert len(lines) == 2
    assert "logger" not in lines[0]  # style 1: output reaches cron, which mails it
    assert "logger" in lines[1]


def test_mail_style_prints_the_error_for_cron_to_mail(tmp_path: Path) -> None:
    assert shutil.which("flock")
    code, output, logged = run_line(dispatch_lines()[0], tmp_path)

    assert code == 4
    assert output.startswith("error: ")
    assert logged == ""


def test_syslog_style_logs_the_error_and_keeps_the_exit_status(tmp_path: Path) -> None:
    code, output, logged = run_line(dispatch_lines()[1], tmp_path)

    assert code == 4
    assert output == ""  # nothing for cron to mail
    assert "error: " in logged
    assert "-p user.err notifyctl dispatch exited 4" in logged
