"""Read the recorded Asterisk sessions in tests/fixtures (real traffic, never edited)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk-23.4.1"
CALL_SCENARIOS = ("basic_ulaw", "caller_hangup", "dtmf", "app_args", "concurrent")


def session(scenario: str) -> list[dict[str, Any]]:
    path = FIXTURES / scenario / "session.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def raw_events(scenario: str) -> Iterator[str]:
    for line in session(scenario):
        if line["kind"] == "event":
            # broadcast_claim (another recorder) keeps the parsed event only
            yield line["raw"] if "raw" in line else json.dumps(line["event"])


def rest_exchanges(scenario: str, role: str | None = None) -> list[dict[str, Any]]:
    """Responses (which repeat their request's method/path) in order, optionally by role."""
    return [
        line
        for line in session(scenario)
        if line["kind"] == "rest_response" and (role is None or line.get("role") == role)
    ]


def all_scenarios() -> list[str]:
    return sorted(p.name for p in FIXTURES.iterdir() if (p / "session.jsonl").exists())
