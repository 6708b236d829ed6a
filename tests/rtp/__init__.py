"""Tests of the pure `rtp` package, with the Asterisk 23.4.1 recordings as data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECORDINGS = Path(__file__).resolve().parents[1] / "fixtures" / "asterisk-23.4.1"


def load_rtp_records(scenario: str) -> list[dict[str, Any]]:
    """Every line of `<scenario>/rtp.jsonl`: one RTP packet each, both directions, in order."""
    with (RECORDINGS / scenario / "rtp.jsonl").open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]
