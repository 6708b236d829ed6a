"""`make demo` is the first thing a newcomer runs: it must keep working."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.tools.demo.run import _demo, _parse_args


async def test_demo_call_runs_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse_args(["--bot-hangs-up-after", "1.5", "--out", str(tmp_path)])
    assert await _demo(args) == 0
    out = capsys.readouterr().out
    assert "Demo OK" in out
    assert "Left behind: nothing" in out
    assert "echo round trip" in out
    assert (tmp_path / "echo.wav").stat().st_size > 44
    assert (tmp_path / "caller.wav").stat().st_size > 44
