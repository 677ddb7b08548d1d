"""Tests of the fake Telegram Bot API server itself (tests/fakes/telegram.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

try:
    from tests.fakes.telegram import (
        FakeTelegram,
        Reply,
        close_connection,
        error,
        hang,
        http_status_only,
        ok,
    )
except ImportError:  # pytest "prepend" import mode puts tests/ itself on sys.path
    from fakes.telegram import (  # type: ignore[no-redef, import-not-found, unused-ignore]
        FakeTelegram,
        Reply,
        close_connection,
        error,
        hang,
        http_status_only,
        ok,
    )

TOKEN = "123:ABC"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    with FakeTelegram(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def send(
    session: requests.Session,
    fake: FakeTelegram,
    chat_id: str | int = 42,
    text: str = "hello",
    token: str = TOKEN,
    timeout: float = 5.0,
    **extra: object,
) -> requests.Response:
    return session.post(
        f"{fake.api_url}/bot{token}/sendMessage",
        json={"chat_id": chat_id, "text": text, **extra},
        timeout=timeout,
    )


def test_success_format_and_increasing_message_ids(
    tg: FakeTelegram, session: requests.Session
) -> None:
    first = send(session, tg, 42, "<b>hi</b>", parse_mode="HTML")
    second = send(session, tg, "-100123", "again")

    assert first.status_code == 200
    assert first.headers["Content-Type"] == "application/json"
    body = first.json()
    assert body["ok"] is True
    assert body["result"]["chat"] == {"id": 42, "type": "private"}
    assert body["result"]["text"] == "<b>hi</b>"
    assert isinstance(body["result"]["date"], int)
    result2 = second.json()["result"]
    assert result2["message_id"] > body["result"]["message_id"]
    assert result2["chat"] == {"id": -100123, "type": "supergroup"}

    first_msg, second_msg = tg.messages
    assert (first_msg.chat_id, first_msg.text, first_msg.parse_mode, first_msg.status) == (
        "42",
        "<b>hi</b>",
        "HTML",
        200,
    )
    assert first_msg.message_id == body["result"]["message_id"]
    assert second_msg.chat_id == "-100123"
    assert second_msg.parse_mode is None
    assert first_msg.at <= second_msg.at
    assert tg.sent() == tg.messages


def test_form_encoded_body_and_link_preview_options(
    tg: FakeTelegram, session: requests.Session
) -> None:
    r = session.post(
        f"{tg.api_url}/bot{TOKEN}/sendMessage",
        data={"chat_id": "@channel", "text": "form"},
        timeout=5,
    )
    assert r.status_code == 200
    assert r.json()["result"]["chat"]["username"] == "channel"
    send(session, tg, 1, "x", link_preview_options={"is_disabled": True})
    assert tg.messages[0].chat_id == "@channel"
    assert tg.messages[1].link_preview_options == {"is_disabled": True}


def test_wrong_token_is_404_and_revoked_token_is_401(
    tg: FakeTelegram, session: requests.Session
) -> None:
    wrong = send(session, tg, token="999:WRONG")
    assert wrong.status_code == 404
    assert wrong.content == b'{"ok":false,"error_code":404,"description":"Not Found"}'

    tg.revoke()
    revoked = send(session, tg)
    assert revoked.status_code == 401
    assert revoked.content == b'{"ok":false,"error_code":401,"description":"Unauthorized"}'

    assert [m.status for m in tg.messages] == [404, 401]
    assert tg.sent() == []


def test_unknown_method_is_404_and_get_me_works(
    tg: FakeTelegram, session: requests.Session
) -> None:
    r = session.post(f"{tg.api_url}/bot{TOKEN}/sendTelepathy", json={}, timeout=5)
    assert r.status_code == 404
    assert r.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
    me = session.get(f"{tg.api_url}/bot{TOKEN}/getMe", timeout=5)
    assert me.json()["result"]["is_bot"] is True
    assert tg.messages == []


@pytest.mark.parametrize(
    ("reply", "status", "wire"),
    [
        pytest.param(
            error(429, "Too Many Requests: retry after 5", retry_after=5),
            429,
            b'{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 5",'
            b'"parameters":{"retry_after":5}}',
            id="429",
        ),
        pytest.param(
            error(400, "Bad Request: chat not found"),
            400,
            b'{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}',
            id="400",
        ),
        pytest.param(
            error(403, "Forbidden: bot was blocked by the user"),
            403,
            b'{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}',
            id="403",
        ),
        pytest.param(
            error(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                migrate_to_chat_id=-100123,
            ),
            400,
            b'{"ok":false,"error_code":400,'
            b'"description":"Bad Request: group chat was upgraded to a supergroup chat",'
            b'"parameters":{"migrate_to_chat_id":-100123}}',
            id="migrate",
        ),
        pytest.param(http_status_only(502, body="Bad Gateway"), 502, b"Bad Gateway", id="502"),
    ],
)
def test_scripted_responses_on_the_wire(
    tg: FakeTelegram, session: requests.Session, reply: Reply, status: int, wire: bytes
) -> None:
    tg.script(-42, reply)

    scripted = send(session, tg, "-42")
    other_chat = send(session, tg, 7)
    after = send(session, tg, -42)

    assert scripted.status_code == status
    assert scripted.content == wire
    if status == 502:
        assert not scripted.headers["Content-Type"].startswith("application/json")
    assert other_chat.status_code == 200
    assert after.status_code == 200
    assert [(m.chat_id, m.status) for m in tg.messages] == [
        ("-42", status),
        ("7", 200),
        ("-42", 200),
    ]


def test_script_queues_several_answers_in_order(
    tg: FakeTelegram, session: requests.Session
) -> None:
    tg.script(
        5, http_status_only(503), error(429, "Too Many Requests: retry after 1", retry_after=1)
    )
    tg.script(5, ok(), error(400, "Bad Request: chat not found"))
    statuses = [send(session, tg, 5).status_code for _ in range(5)]
    assert statuses == [503, 429, 200, 400, 200]
    assert tg.count_429 == 1
    assert len(tg.sent()) == 2


def test_fail_all_overrides_until_clear(tg: FakeTelegram, session: requests.Session) -> None:
    tg.script(1, error(403, "Forbidden: user is deactivated"))
    tg.fail_all(http_status_only(500, "Internal Server Error"))
    assert [send(session, tg, chat).status_code for chat in (1, 2)] == [500, 500]
    tg.clear()  # removes the override and the scripts
    assert [send(session, tg, chat).status_code for chat in (1, 2)] == [200, 200]


def test_bad_requests_are_rejected_like_telegram(
    tg: FakeTelegram, session: requests.Session
) -> None:
    assert send(session, tg, 1, "").json()["description"] == "Bad Request: message text is empty"
    too_long = send(session, tg, 1, "x" * 4097)
    assert too_long.json()["description"] == "Bad Request: message is too long"
    assert send(session, tg, 1, "x" * 4096).status_code == 200
    assert [m.status for m in tg.messages] == [400, 400, 200]


def test_rate_ceiling_answers_429_above_the_rate(session: requests.Session) -> None:
    with FakeTelegram(token=TOKEN, rate_limit=5.0) as tg:
        responses = [send(session, tg, i) for i in range(8)]
        statuses = [r.status_code for r in responses]
        stats = tg.stats()
        max_rate = tg.max_per_second()

    assert statuses == [200] * 5 + [429] * 3
    for r in responses[5:]:
        body = r.json()
        retry_after = body["parameters"]["retry_after"]
        assert isinstance(retry_after, int)
        assert retry_after >= 1
        assert body["description"] == f"Too Many Requests: retry after {retry_after}"
    assert tg.count_429 == 3
    assert max_rate == 5
    assert stats["sent"] == 5
    assert stats["by_status"] == {"200": 5, "429": 3}


def test_hang_causes_read_timeout_without_blocking_others(
    tg: FakeTelegram, session: requests.Session
) -> None:
    tg.script(1, hang(30))
    with pytest.raises(requests.ReadTimeout):
        send(session, tg, 1, timeout=0.3)
    # The hanging handler is still sleeping; another request is served meanwhile.
    with requests.Session() as other:
        assert send(other, tg, 2).status_code == 200
    # The session recovers on a fresh connection.
    assert send(session, tg, 1).status_code == 200
    # The hung message counts as received (it may have gone out).
    assert [(m.chat_id, m.status) for m in tg.messages] == [("1", 200), ("2", 200), ("1", 200)]


def test_close_connection_causes_connection_error(
    tg: FakeTelegram, session: requests.Session
) -> None:
    tg.script(3, close_connection())
    with pytest.raises(requests.ConnectionError):
        send(session, tg, 3)
    assert send(session, tg, 3).status_code == 200
    assert [m.status for m in tg.messages] == [0, 200]


def test_wait_for_synchronises_with_another_thread(tg: FakeTelegram) -> None:
    def client() -> None:
        with requests.Session() as s:
            for i in range(3):
                send(s, tg, i)

    worker = threading.Thread(target=client)
    worker.start()
    try:
        got = tg.wait_for(3, timeout=10)
    finally:
        worker.join()
    assert sorted(m.chat_id for m in got) == ["0", "1", "2"]
    with pytest.raises(TimeoutError, match="3 of 4"):
        tg.wait_for(4, timeout=0.01)


def test_stop_is_idempotent_and_closes_idle_keep_alive_connections(
    session: requests.Session,
) -> None:
    tg = FakeTelegram(token=TOKEN)
    assert send(session, tg).status_code == 200  # leaves a keep-alive connection open
    tg.stop()
    tg.stop()
    with pytest.raises(requests.ConnectionError):
        send(session, tg)


def test_stats_endpoint(tg: FakeTelegram, session: requests.Session) -> None:
    send(session, tg)
    stats = session.get(f"{tg.api_url}/stats", timeout=5).json()
    assert stats["sent"] == 1
    assert stats["requests"] == 1


def test_benchmark_entry_point_runs_the_same_server(session: requests.Session) -> None:
    script = REPO / "benchmarks" / "fake_telegram_server.py"
    with subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--rate", "2", "--token", "T:1"],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        try:
            first = proc.stdout.readline().strip()
            assert first.startswith("PORT=")
            url = f"http://127.0.0.1:{int(first.removeprefix('PORT='))}"
            statuses = [
                session.post(
                    f"{url}/botT:1/sendMessage", json={"chat_id": 1, "text": "x"}, timeout=5
                ).status_code
                for _ in range(3)
            ]
            assert statuses == [200, 200, 429]
            assert session.get(f"{url}/stats", timeout=5).json()["sent"] == 2
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    final = json.loads(out.strip().splitlines()[-1])
    assert final["sent"] == 2
    assert final["count_429"] == 1


def edit(
    session: requests.Session, fake: FakeTelegram, chat_id: str, message_id: object, text: str
) -> requests.Response:
    body = {"chat_id": chat_id, "message_id": message_id, "text": text, "parse_mode": "HTML"}
    return session.post(f"{fake.api_url}/bot{TOKEN}/editMessageText", json=body, timeout=5)


def test_edit_message_text_answers_like_the_real_api(
    tg: FakeTelegram, session: requests.Session
) -> None:
    sent = send(session, tg, 42, "old").json()["result"]

    done = edit(session, tg, "42", sent["message_id"], "<s>old</s>\nnew")
    same = edit(session, tg, "42", sent["message_id"], "<s>old</s>\nnew")
    unknown = edit(session, tg, "42", 999, "x")
    other_chat = edit(session, tg, "43", sent["message_id"], "x")

    assert done.status_code == 200
    assert done.json()["result"]["message_id"] == sent["message_id"]
    assert "edit_date" in done.json()["result"]
    assert tg.text_of(42, sent["message_id"]) == "<s>old</s>\nnew"
    assert same.json() == {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: message is not modified: specified new message content "
        "and reply markup are exactly the same as a current content and reply markup of "
        "the message",
    }
    for refused in (unknown, other_chat):
        assert refused.json()["description"] == "Bad Request: message to edit not found"
    assert [e.status for e in tg.edits] == [200, 400, 400, 400]


def test_a_message_past_the_edit_window_can_not_be_edited(
    tg: FakeTelegram, session: requests.Session
) -> None:
    sent = send(session, tg, 42, "old").json()["result"]
    tg.edit_window = 0.0

    answer = edit(session, tg, "42", sent["message_id"], "new")

    assert answer.status_code == 400
    assert answer.json()["description"] == "Bad Request: message can't be edited"
    assert tg.text_of(42, sent["message_id"]) == "old"
