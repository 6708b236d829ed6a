"""`make demo` is the first thing a newcomer runs: it must keep working."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.tools.demo.run import _demo, _parse_args
from bridge.tools.demo.transfer_demo import run_demo


async def test_demo_call_runs_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse_args(["--bot-hangs-up-after", "1.5", "--out", str(tmp_path)])
    assert await _demo(args) == 0
    out = capsys.readouterr().out
    assert "Demo OK" in out
    assert "Left behind: nothing" in out
    assert "echo round trip" in out
    assert (tmp_path / "echo.wav").stat().st_size > 44
    assert (tmp_path / "caller.wav").stat().st_size > 44


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--transport", "audiosocket"], "Media (audiosocket, slin)"),
        (["--transport", "websocket"], "Media (websocket, ulaw)"),
        (["--transport", "audiosocket", "--dialplan"], "Media (audiosocket, slin)"),
        (["--transport", "websocket", "--dialplan"], "Media (websocket, ulaw)"),
        (["--transport", "audiosocket", "--format", "slin16"], "echo delay"),
    ],
    ids=["audiosocket", "websocket", "audiosocket-dialplan", "websocket-dialplan",
         "audiosocket-slin16"],
)
async def test_demo_call_runs_clean_on_each_transport(
    argv: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parse_args([*argv, "--bot-hangs-up-after", "1.5", "--out", str(tmp_path)])
    assert await _demo(args) == 0
    out = capsys.readouterr().out
    assert "Demo OK" in out
    assert "Left behind: nothing" in out
    assert named in out
    assert (tmp_path / "echo.wav").stat().st_size > 44


def test_demo_refuses_what_it_cannot_show() -> None:
    with pytest.raises(SystemExit):
        _parse_args(["--dialplan"])  # RTP needs ARI
    with pytest.raises(SystemExit):
        _parse_args(["--transport", "audiosocket", "--format", "ulaw"])


async def test_transfer_demo_hands_the_caller_to_a_person(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await run_demo() == 0
    out = capsys.readouterr().out
    assert "Demo OK" in out
    assert "Left behind: nothing" in out
    assert "bot    got transfer_answered" in out
    assert "Recording: demo/" in out and ", done" in out
