"""Load one recorded scenario (tests/fixtures/asterisk-23.4.1/<name>/) into frozen dataclasses.

A scenario directory holds `session.jsonl` (ARI events exactly as Asterisk sent them, REST
requests and responses, notes) and `rtp.jsonl` (every RTP packet, both directions). `dir` in
`rtp.jsonl` is seen from the recording client: "in" = Asterisk -> us, "out" = us -> Asterisk.

Times: `t_rel` is seconds since the scenario started. The helpers that describe the caller side
(inbound RTP, DTMF, the caller's own hang-up) return offsets from the *bridged moment*, the 204
answer to the `addChannel` that put the caller and its UnicastRTP channel in one bridge: that is
the moment from which a simulated caller replays its side.

Pure: reads files, never sockets or clocks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES_DIR = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "asterisk-23.4.1"

# Channel name prefixes of the channels externalMedia creates (asterisk-facts §1).
MEDIA_PREFIXES = ("UnicastRTP/", "WebSocket/", "AudioSocket/")


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    seq: int
    t_rel: float
    raw: str  # the exact text frame Asterisk sent
    data: Mapping[str, Any]  # json.loads(raw); dicts keep the recorded key order

    @property
    def type(self) -> str:
        return str(self.data.get("type", ""))

    @property
    def channel_id(self) -> str | None:
        """Id of the channel the event is about (`channel`, or `peer` for Dial)."""
        obj = self.data.get("channel") or self.data.get("peer")
        return obj.get("id") if isinstance(obj, dict) else None

    @property
    def channel_name(self) -> str:
        obj = self.data.get("channel") or self.data.get("peer")
        return str(obj.get("name", "")) if isinstance(obj, dict) else ""

    @property
    def bridge_id(self) -> str | None:
        obj = self.data.get("bridge")
        return obj.get("id") if isinstance(obj, dict) else None


@dataclass(frozen=True, slots=True)
class RestExchange:
    id: int
    role: str  # "trigger" (the lab placing a call), "bridge" (what a bridge does), "probe"
    method: str
    path: str
    query: Mapping[str, str]
    t_request: float
    t_response: float
    status: int
    reason: str
    headers: Mapping[str, str]
    body_text: str
    note: str | None

    @property
    def body(self) -> Any:
        return json.loads(self.body_text) if self.body_text else None


@dataclass(frozen=True, slots=True)
class RtpRecord:
    dir: str  # "in" = Asterisk -> us, "out" = us -> Asterisk
    t_rel: float
    data: bytes
    src: tuple[str, int]
    dst: tuple[str, int]
    call: str  # the caller channel id the recorder filed the packet under


@dataclass(frozen=True, slots=True)
class TimedDtmf:
    offset: float  # seconds after the bridged moment
    digit: str
    duration_ms: int


@dataclass(frozen=True, slots=True)
class CallerScript:
    """Everything the far end of one recorded call did, relative to the bridged moment."""

    caller_id: str
    stasis_start: RecordedEvent
    inbound_rtp: tuple[tuple[float, bytes], ...]  # (offset, exact packet) Asterisk -> us
    dtmf: tuple[TimedDtmf, ...]
    hangup_offset: float | None  # the caller hung up first (cause 16, no `soft`) at this offset
    echo: bool  # the far end echoed our audio (its inbound RTP is our own packets coming back)


def _made_by_the_app(start: RecordedEvent) -> bool:
    """A StasisStart of a channel the recording client created (see caller_stasis_starts)."""
    name, args = start.channel_name, list(start.data.get("args") or [])
    return (
        name.startswith((*MEDIA_PREFIXES, "Snoop/"))
        or name.endswith(";2")
        or args[:1] in (["transfer"], ["snoop"])
        or str(start.channel_id).startswith("xfer")
    )


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


@dataclass(frozen=True, slots=True)
class Recording:
    name: str
    path: Path
    events: tuple[RecordedEvent, ...]
    rest: tuple[RestExchange, ...]
    rtp: tuple[RtpRecord, ...]
    notes: tuple[Mapping[str, Any], ...]
    summary: Mapping[str, Any]

    # -- queries over events ---------------------------------------------------------------

    def events_of(self, event_type: str, channel_id: str | None = None) -> list[RecordedEvent]:
        return [
            e
            for e in self.events
            if e.type == event_type and (channel_id is None or e.channel_id == channel_id)
        ]

    def first_event(
        self, event_type: str, channel_id: str | None = None, **fields: Any
    ) -> RecordedEvent:
        for event in self.events_of(event_type, channel_id):
            if all(event.data.get(k) == v for k, v in fields.items()):
                return event
        raise LookupError(f"{self.name}: no {event_type} {channel_id or ''} {fields or ''}")

    def per_channel_types(self) -> dict[str, list[str]]:
        """Event types per channel id (and `bridge:<id>` for bridge-only events), in order.

        Same keying as summary.json `per_channel`: an event counts for the object in its
        `channel` key; Dial (which only has `peer`) is left out, as the digest does.
        """
        out: dict[str, list[str]] = {}
        for event in self.events:
            channel = event.data.get("channel")
            if isinstance(channel, dict):
                key = str(channel.get("id"))
            elif event.bridge_id is not None:
                key = f"bridge:{event.bridge_id}"
            else:
                continue
            out.setdefault(key, []).append(event.type)
        return out

    # -- the calls in the recording --------------------------------------------------------

    def caller_stasis_starts(self) -> list[RecordedEvent]:
        """StasisStart of every caller, in arrival order.

        Not a caller: the externalMedia channels, and what the app made itself in the later
        recordings (INDEX.md): transfer targets (`args ["transfer"]`, ids `xfer…`), snoops
        (`Snoop/…`, `args ["snoop", …]`) and any `;2` half. Told apart by name and args, so
        the older recordings (an originated `outbound,lab` caller included) keep their callers.
        """
        return [e for e in self.events_of("StasisStart") if not _made_by_the_app(e)]

    def caller_stasis_start(self, index: int = 0) -> RecordedEvent:
        starts = self.caller_stasis_starts()
        if not starts:
            raise LookupError(f"{self.name}: no caller StasisStart")
        return starts[index]

    def caller_ids(self) -> list[str]:
        return [str(e.channel_id) for e in self.caller_stasis_starts()]

    def add_channel_exchange(self, caller_id: str) -> RestExchange:
        """The successful addChannel that bridged this caller (the bridged moment)."""
        for ex in self.rest:
            channels = ex.query.get("channel", "").split(",")
            if ex.path.endswith("/addChannel") and ex.status == 204 and caller_id in channels:
                return ex
        raise LookupError(f"{self.name}: caller {caller_id} was never bridged")

    def bridged_at(self, caller_id: str) -> float:
        return self.add_channel_exchange(caller_id).t_response

    def em_channel_id(self, caller_id: str) -> str | None:
        channels = self.add_channel_exchange(caller_id).query.get("channel", "").split(",")
        others = [c for c in channels if c != caller_id]
        return others[0] if others else None

    def bridge_id(self, caller_id: str) -> str:
        return self.add_channel_exchange(caller_id).path.split("/")[3]

    def inbound_rtp(self, caller_id: str) -> list[RtpRecord]:
        return [p for p in self.rtp if p.dir == "in" and p.call == caller_id]

    def first_inbound_rtp_at(self, caller_id: str) -> float | None:
        """t_rel of the first packet Asterisk sent towards us on this call, if any."""
        packets = self.inbound_rtp(caller_id)
        return packets[0].t_rel if packets else None

    def dtmf(self, caller_id: str) -> list[TimedDtmf]:
        start = self.bridged_at(caller_id)
        return [
            TimedDtmf(e.t_rel - start, str(e.data["digit"]), int(e.data["duration_ms"]))
            for e in self.events_of("ChannelDtmfReceived", caller_id)
        ]

    def caller_hangup_offset(self, caller_id: str) -> float | None:
        """Offset of the caller's own hang-up: a ChannelHangupRequest without `soft` (§13)."""
        for event in self.events_of("ChannelHangupRequest", caller_id):
            if "soft" not in event.data:
                return event.t_rel - self.bridged_at(caller_id)
        return None

    def is_echo(self, caller_id: str) -> bool:
        """True when everything Asterisk sent was a payload we had sent before (far end Echo)."""
        ours = {p.data[12:] for p in self.rtp if p.dir == "out" and p.call == caller_id}
        theirs = self.inbound_rtp(caller_id)
        return bool(theirs) and all(p.data[12:] in ours for p in theirs)

    def caller_script(self, index: int = 0) -> CallerScript:
        start_event = self.caller_stasis_start(index)
        caller_id = str(start_event.channel_id)
        start = self.bridged_at(caller_id)
        echo = self.is_echo(caller_id)
        packets = [] if echo else self.inbound_rtp(caller_id)
        inbound = tuple((p.t_rel - start, p.data) for p in packets)
        return CallerScript(
            caller_id=caller_id,
            stasis_start=start_event,
            inbound_rtp=inbound,
            dtmf=tuple(self.dtmf(caller_id)),
            hangup_offset=self.caller_hangup_offset(caller_id),
            echo=echo,
        )


def load_recording(name_or_path: str | Path, fixtures_dir: Path = FIXTURES_DIR) -> Recording:
    """Load a scenario by name ("basic_ulaw") or by directory path."""
    path = Path(name_or_path)
    if not path.is_dir():
        path = fixtures_dir / str(name_or_path)
    if not (path / "session.jsonl").exists():
        raise FileNotFoundError(f"no recorded scenario at {path}")
    events: list[RecordedEvent] = []
    requests: dict[int, dict[str, Any]] = {}
    rest: list[RestExchange] = []
    notes: list[Mapping[str, Any]] = []
    for row in _read_jsonl(path / "session.jsonl"):
        kind = row["kind"]
        if kind == "event":
            raw = row["raw"]
            events.append(RecordedEvent(row["seq"], row["t_rel"], raw, json.loads(raw)))
        elif kind == "rest_request":
            requests[row["id"]] = row
        elif kind == "rest_response":
            req = requests.pop(row["id"])
            rest.append(
                RestExchange(
                    id=row["id"],
                    role=row.get("role", ""),
                    method=row["method"],
                    path=row["path"],
                    query=dict(req.get("query") or {}),
                    t_request=req["t_rel"],
                    t_response=row["t_rel"],
                    status=row["status"],
                    reason=row["reason"],
                    headers=dict(row.get("headers") or {}),
                    body_text=row.get("body_text") or "",
                    note=req.get("note"),
                )
            )
        else:
            notes.append(row)
    rtp = tuple(
        RtpRecord(
            dir=row["dir"],
            t_rel=row["t_rel"],
            data=bytes.fromhex(row["data_hex"]),
            src=_addr(row["src"]),
            dst=_addr(row["dst"]),
            call=str(row.get("call", "")),
        )
        for row in _read_jsonl(path / "rtp.jsonl")
    )
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    return Recording(path.name, path, tuple(events), tuple(rest), rtp, tuple(notes), summary)
