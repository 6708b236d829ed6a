"""The webhook spool: rows survive a reopen, the file is private, the path follows systemd."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.ops.spool import Spool, SpooledRow, default_spool_path

ROW = ("msg_1", "call.ended", "http://127.0.0.1/h", b'{"type":"call.ended"}', 100.0, 100.0)


def test_rows_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "webhooks.sqlite"
    spool = Spool(path)
    spool.open()
    first, second = spool.add([ROW, ("msg_2", *ROW[1:])])
    spool.update(first, 3, 120.0)
    spool.close()

    spool = Spool(path)
    spool.open()
    assert spool.load() == [
        SpooledRow(first, "msg_1", "call.ended", ROW[2], ROW[3], 100.0, 3, 120.0),
        SpooledRow(second, "msg_2", "call.ended", ROW[2], ROW[3], 100.0, 0, 100.0),
    ]
    spool.delete(first)
    assert [row.msg_id for row in spool.load()] == ["msg_2"]
    assert spool.count() == 1
    spool.close()


def test_wal_and_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "webhooks.sqlite"
    spool = Spool(path)
    spool.open()
    spool.add([ROW])
    assert spool.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    spool.close()


def test_memory_spool() -> None:
    spool = Spool(None)
    spool.open()
    assert spool.add([ROW, ROW]) == [1, 2]
    assert repr(spool) == "Spool(:memory:)"
    spool.close()


def test_unopenable_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot open the webhook spool"):
        Spool(tmp_path / "file" / "webhooks.sqlite").open()
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigError, match="cannot open the webhook spool"):
        Spool(tmp_path / "junk.sqlite").open()


def test_closed_spool_refuses() -> None:
    with pytest.raises(RuntimeError, match="not open"):
        Spool(None).load()


def test_one_transaction_per_batch(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "w.sqlite")
    spool.open()
    with pytest.raises(sqlite3.Error):
        spool.add([ROW, ("msg_2", None, *ROW[2:])])  # type: ignore[list-item]
    assert spool.count() == 0  # the first row was rolled back with the second
    spool.close()


@pytest.mark.parametrize(
    ("env", "path"),
    [
        ({"STATE_DIRECTORY": "/var/lib/pipecat-bridge"}, "/var/lib/pipecat-bridge/webhooks.sqlite"),
        ({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}, "/var/lib/a/webhooks.sqlite"),
        ({"XDG_STATE_HOME": "/x", "HOME": "/h"}, "/x/pipecat-bridge/webhooks.sqlite"),
        ({"HOME": "/h"}, "/h/.local/state/pipecat-bridge/webhooks.sqlite"),
    ],
)
def test_default_spool_path(env: dict[str, str], path: str) -> None:
    assert default_spool_path(env) == Path(path)
