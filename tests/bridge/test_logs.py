from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from tenacity import RetryCallState

from ari.events_socket import AriEventsSocket, events_url
from bridge.logs import configure_logging, get_logger, redact_url

SECRET = "s3cret"


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    """configure_logging is global; put back what conftest set once the test is done."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def assert_no_secret(text: str) -> None:
    assert SECRET not in text


def assert_json_lines(text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    assert lines, "nothing was logged"
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) for r in records)
    return records


# ---- redact_url --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "ws://127.0.0.1:8088/ari/events?app=pipecat&api_key=asterisk:s3cret&subscribeAll=false",
            "ws://127.0.0.1:8088/ari/events?app=pipecat&api_key=***&subscribeAll=false",
        ),
        (
            "ws://h/ari/events?app=a&api_key=asterisk%3As3cret",
            "ws://h/ari/events?app=a&api_key=***",
        ),
        ("http://h/x?password=s3cret&y=1", "http://h/x?password=***&y=1"),
        ("http://h/x?PASSWORD=s3cret", "http://h/x?PASSWORD=***"),
        ("wss://bot/ws?token=s3cret", "wss://bot/ws?token=***"),
        ("http://asterisk:s3cret@pbx:8088/ari", "http://***@pbx:8088/ari"),
        ("wss://asterisk:s3cret@pbx/ws?token=s3cret", "wss://***@pbx/ws?token=***"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ws://127.0.0.1:8765/ws",
        "http://127.0.0.1:8088/ari/channels?app=pipecat&format=ulaw",
        "wss://bot.example/calls/abc?caller=5551000",
    ],
)
def test_redact_url_leaves_urls_without_secrets_alone(url: str) -> None:
    assert redact_url(url) == url


def test_redact_url_inside_an_error_text() -> None:
    text = "InvalidStatus: ws://h/ari/events?api_key=asterisk:s3cret rejected (HTTP 401)"
    assert redact_url(text) == "InvalidStatus: ws://h/ari/events?api_key=*** rejected (HTTP 401)"


# ---- the configured logger ---------------------------------------------------------------


@pytest.mark.usefixtures("restore_structlog")
def test_json_logging_never_prints_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")
    log = get_logger("test")
    log.info(
        "x",
        url=f"ws://h/ari/events?app=a&api_key=asterisk:{SECRET}",
        password=SECRET,
        ari_password=SECRET,
    )
    err = capsys.readouterr().err
    assert_no_secret(err)
    (record,) = assert_json_lines(err)
    assert record["event"] == "x"
    assert record["level"] == "info"
    assert record["url"] == "ws://h/ari/events?app=a&api_key=***"
    assert record["password"] == "***"
    assert record["ari_password"] == "***"
    assert "timestamp" in record


@pytest.mark.usefixtures("restore_structlog")
def test_json_logging_masks_every_secret_key_and_url_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", "debug")
    log = get_logger("test")
    log.debug("a", api_key=f"asterisk:{SECRET}", token=SECRET, Authorization=f"Basic {SECRET}")
    log.warning("b", bot_url=f"wss://u:{SECRET}@bot/ws", events_url=f"ws://h/?api_key={SECRET}")
    err = capsys.readouterr().err
    assert_no_secret(err)
    first, second = assert_json_lines(err)
    assert (first["api_key"], first["token"], first["Authorization"]) == ("***", "***", "***")
    assert second["bot_url"] == "wss://***@bot/ws"
    assert second["events_url"] == "ws://h/?api_key=***"


@pytest.mark.usefixtures("restore_structlog")
def test_json_logging_filters_by_level(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "warning")
    log = get_logger("test")
    log.info("quiet")
    log.warning("loud")
    records = assert_json_lines(capsys.readouterr().err)
    assert [r["event"] for r in records] == ["loud"]


@pytest.mark.usefixtures("restore_structlog")
def test_console_logging_never_prints_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("console", "info")
    get_logger("test").info("x", url=f"ws://h/?api_key=asterisk:{SECRET}", password=SECRET)
    err = capsys.readouterr().err
    assert "x" in err
    assert_no_secret(err)


# ---- the events socket's failed connect --------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.usefixtures("restore_structlog")
async def test_failed_events_connect_is_logged_without_the_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_logging("json", "debug")
    url = events_url(f"http://127.0.0.1:{closed_port()}/ari", "pipecat", "asterisk", SECRET)
    assert SECRET in url
    events = AriEventsSocket(url, on_event=lambda _event: None)
    retry_logged = asyncio.Event()
    log_retry = events._log_retry

    def log_retry_and_signal(state: RetryCallState) -> None:
        log_retry(state)
        retry_logged.set()

    monkeypatch.setattr(events, "_log_retry", log_retry_and_signal)
    task = asyncio.create_task(events.run())
    await retry_logged.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not events.connected.is_set()
    assert events.connects == 0
    out, err = capsys.readouterr()
    assert_no_secret(out + err)
    (record,) = assert_json_lines(err)
    assert record["event"] == "ari_events_connect_failed"
    assert record["level"] == "warning"
    assert record["attempt"] == 1
    assert record["error"].startswith("ConnectionRefusedError: ")
    assert record["retry_in"] > 0
