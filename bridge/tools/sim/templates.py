"""Wire templates taken from the recordings: ARI events, REST bodies, RTP headers.

Every ARI event or body the simulator sends is rendered from a recorded one: the recorded object
gives the keys *and their order* (Asterisk's JSON is not key-sorted: ChannelVarset starts with
`variable`, ChannelHangupRequest with `cause`), the simulator only supplies new values. Rendering a
template with the recorded values gives back the recorded `raw` text byte for byte (see the tests).

REST answers: the recorded status / reason phrase / body of every error (errors scenario) and
the externalMedia checks that produce them.

Playback (`POST /channels/{id}/play`, PlaybackStarted/PlaybackFinished) is in no recording: its
shapes follow Asterisk 23's source (see `PLAYBACK`), wrapped like the recorded sibling resource,
the bridge recording (`RecordingStarted`, the 201 + Location answer of `/record`). Recordings'
events and bodies are the recorded ones (bridge_record_mixed); RecordingFailed, never recorded,
is RecordingFinished's envelope with res_stasis_recording.c's `cause` (`_recording_failed`).

RTP: the header stream Asterisk 23.4.1 started on a UnicastRTP channel (basic_ulaw, slin16):
V=2, no padding/extension/CSRC, marker 0 on the first packet, first timestamp = one packet's
worth of samples (160 / 320), +samples per 20 ms packet, random SSRC and sequence; what an Echo()
far end sends back (echo_roundtrip); which sources strict RTP accepts (rtp_symmetric_probe); and
the far end's timeline after the bridged moment.

Pure: no sockets, no clocks (timestamps are rendered from a wall-clock time passed in).
"""

from __future__ import annotations

import copy
import json
import random
import re
import struct
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge.tools.sim.recording import FIXTURES_DIR, CallerScript, Recording, load_recording


def format_timestamp(epoch: float) -> str:
    """Asterisk's event/creationtime format: `2026-11-22T02:12:40.075+0000` (UTC, ms)."""
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def dumps(obj: Any) -> str:
    """JSON the way Asterisk (jansson, compact) writes it: no spaces, keys in insertion order."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def reshape(template: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A new object with the template's keys in the template's order.

    A key missing from `values` keeps the template's value (constants such as `protocol_id`,
    `language`); a nested object present in both is reshaped recursively; a key the template
    does not have is a bug in the caller and raises, so no invented key reaches the wire.
    """
    extra = set(values) - set(template)
    if extra:
        raise KeyError(f"keys not in the recorded shape: {sorted(extra)}")
    out: dict[str, Any] = {}
    for key, recorded in template.items():
        if key not in values:
            out[key] = copy.deepcopy(recorded)
        elif isinstance(recorded, dict) and isinstance(values[key], dict):
            out[key] = reshape(recorded, values[key])
        else:
            out[key] = values[key]
    return out


# Which recorded event serves as the template for each kind the simulator emits:
# kind -> (scenario, event type, fields the recorded event must have).
_EVENT_SOURCES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "StasisStart": ("basic_ulaw", "StasisStart", {}),
    "Dial": ("basic_ulaw", "Dial", {}),
    "ChannelStateChange": ("basic_ulaw", "ChannelStateChange", {}),
    "ChannelVarset": ("basic_ulaw", "ChannelVarset", {}),
    "ChannelEnteredBridge": ("basic_ulaw", "ChannelEnteredBridge", {}),
    "ChannelLeftBridge": ("basic_ulaw", "ChannelLeftBridge", {}),
    "ChannelConnectedLine": ("basic_ulaw", "ChannelConnectedLine", {}),
    # Our DELETE: `{"cause":32,"soft":true,...}`; the far end hanging up: `{"cause":16,...}`.
    "ChannelHangupRequest": ("basic_ulaw", "ChannelHangupRequest", {"soft": True}),
    "ChannelHangupRequest/far": ("caller_hangup", "ChannelHangupRequest", {"cause": 16}),
    "StasisEnd": ("basic_ulaw", "StasisEnd", {}),
    "ChannelDestroyed": ("basic_ulaw", "ChannelDestroyed", {}),
    "BridgeDestroyed": ("basic_ulaw", "BridgeDestroyed", {}),
    "ChannelDtmfReceived": ("dtmf", "ChannelDtmfReceived", {}),
    # A Local target's ;2 half (both first recorded for originates into the app).
    "ChannelCallerId": ("transfer_originate_answer", "ChannelCallerId", {}),
    "ChannelDialplan": ("transfer_originate_answer", "ChannelDialplan", {}),
    "RecordingStarted": ("bridge_record_mixed", "RecordingStarted", {}),
    "RecordingFinished": ("bridge_record_mixed", "RecordingFinished", {}),
}


# The Playback object, from res/res_stasis_playback.c stasis_app_playback_to_json() (Asterisk 23):
# jansson keeps insertion order, so these keys in this order; `next_media_uri` (only while a
# list of several media plays) is left out: the simulator plays one media per request.
PLAYBACK: Mapping[str, Any] = {
    "id": "", "media_uri": "", "target_uri": "", "language": "en", "state": "queued",
}  # fmt: skip


def _playback_event(recording_event: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """PlaybackStarted/Finished shaped like the recorded RecordingStarted.

    res_stasis_playback.c playback_to_json() packs `{"type", "timestamp", "playback"}` exactly
    as res_stasis_recording.c recording_to_json() packs `{"type", "timestamp", "recording"}`,
    and the app appends `asterisk_id` and `application` to both: so the recorded envelope with
    the playback object in the recording's place.
    """
    out: dict[str, Any] = {}
    for key, value in recording_event.items():
        if key == "recording":
            out["playback"] = dict(PLAYBACK)
        else:
            out[key] = kind if key == "type" else value
    return out


def _recording_failed(finished: Mapping[str, Any]) -> dict[str, Any]:
    """RecordingFailed shaped like the recorded RecordingFinished.

    res_stasis_recording.c: recording_to_json() names the event after the state ("failed"),
    the LiveRecording object has no `duration` yet (record_file() fails before recording, so
    duration.total is still -1), and recording_publish() appends `cause` to it.
    """
    out = copy.deepcopy(dict(finished))
    out["type"] = "RecordingFailed"
    recording = {k: v for k, v in finished["recording"].items() if k != "duration"}
    out["recording"] = {**recording, "state": "failed", "cause": ""}
    return out


def broadcast_events(fixtures_dir: Path = FIXTURES_DIR) -> dict[str, Mapping[str, Any]]:
    """CallBroadcast and CallClaimed as recorded in `broadcast_claim` (its own format: one
    JSON object a line, the events under `event`): the first of each."""
    found: dict[str, Mapping[str, Any]] = {}
    path = fixtures_dir / "broadcast_claim" / "session.jsonl"
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        event = entry.get("event") if entry.get("kind") == "event" else None
        kind = event.get("type") if isinstance(event, dict) else None
        if isinstance(event, dict) and kind in ("CallBroadcast", "CallClaimed"):
            found.setdefault(kind, event)
    missing = {"CallBroadcast", "CallClaimed"} - set(found)
    if missing:
        raise LookupError(f"broadcast_claim: no {sorted(missing)}")
    return found


@dataclass(frozen=True, slots=True)
class Templates:
    events: Mapping[str, Mapping[str, Any]]
    channel: Mapping[str, Any]  # channel snapshot as in events and GET /channels
    em_response: Mapping[str, Any]  # externalMedia 200 body (snapshot + channelvars)
    bridge: Mapping[str, Any]
    application: Mapping[str, Any]
    ping: Mapping[str, Any]
    info: Mapping[str, Any]
    live_recording: Mapping[str, Any]  # GET /recordings/live/{name}, the 201 of /record
    stored_recording: Mapping[str, Any]  # GET /recordings/stored/{name}

    @classmethod
    def from_recordings(cls, fixtures_dir: Path = FIXTURES_DIR) -> Templates:
        cache: dict[str, Recording] = {}

        def rec(name: str) -> Recording:
            if name not in cache:
                cache[name] = load_recording(name, fixtures_dir)
            return cache[name]

        events = {}
        for kind, (scenario, event_type, fields) in _EVENT_SOURCES.items():
            events[kind] = rec(scenario).first_event(event_type, **fields).data
        basic, meta = rec("basic_ulaw"), rec("meta")
        recording_started = rec("inbound_audio_check_ulaw").first_event("RecordingStarted").data
        for kind in ("PlaybackStarted", "PlaybackFinished"):
            events[kind] = _playback_event(recording_started, kind)
        events.update(broadcast_events(fixtures_dir))
        events["RecordingFailed"] = _recording_failed(events["RecordingFinished"])
        record = rec("bridge_record_mixed")

        def body(recording: Recording, method: str, path: str) -> Any:
            for ex in recording.rest:
                if ex.method == method and ex.path == path and ex.status < 300:
                    return ex.body
            raise LookupError(f"{recording.name}: no {method} {path}")

        em_response = body(basic, "POST", "/ari/channels/externalMedia")
        return cls(
            events=events,
            channel=events["StasisStart"]["channel"],
            em_response=em_response,
            bridge=body(basic, "POST", "/ari/bridges"),
            application=body(meta, "GET", "/ari/applications/pipecat"),
            ping=body(meta, "GET", "/ari/asterisk/ping"),
            info=body(meta, "GET", "/ari/asterisk/info"),
            live_recording=next(ex.body for ex in record.rest if ex.status == 200
                                and ex.path.startswith("/ari/recordings/live/")),
            stored_recording=next(ex.body for ex in record.rest if ex.status == 200
                                  and ex.path.startswith("/ari/recordings/stored/")
                                  and not ex.path.endswith("/file")),
        )  # fmt: skip

    def event(self, kind: str, **values: Any) -> str:
        """Render one event to the exact text frame Asterisk would send."""
        return dumps(reshape(self.events[kind], values))

    def channel_snapshot(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return reshape(self.channel, values)

    def em_channel_body(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return reshape(self.em_response, values)

    def bridge_snapshot(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return reshape(self.bridge, values)

    def playback(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return reshape(PLAYBACK, values)

    def recording(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return reshape(self.live_recording, values)


# -- REST answers -------------------------------------------------------------------------

INTERNAL_ERROR = "An internal error prevented this request from being handled"
# Formats Asterisk 23 knows (`core show codecs`, audio); anything else: 500 (errors: notacodec).
KNOWN_FORMATS = frozenset({
    "ulaw", "alaw", "gsm", "g722", "g726", "g726aal2", "g729", "ilbc", "lpc10", "speex",
    "speex16", "speex32", "opus", "adpcm", "g719", "siren7", "siren14", "testlaw", "slin",
    "slin12", "slin16", "slin24", "slin32", "slin44", "slin48", "slin96", "slin192",
})  # fmt: skip
BRIDGE_TYPES = frozenset(
    {"mixing", "holding", "dtmf_events", "proxy_media", "video_sfu", "video_single"}
)


@dataclass(slots=True)
class Reply:
    status: int
    body: Any = None  # JSON-able, or str sent as is; None: no body
    reason: str | None = None  # HTTP reason phrase when Asterisk's differs from the standard one
    after: Callable[[], None] | None = None  # runs once the response is on the wire
    location: str | None = None  # a 201's Location header (ast_ari_response_created)
    content_type: str | None = None  # for a `bytes` body (a stored recording's file)


def error_reply(status: int, message: str, reason: str | None = None) -> Reply:
    return Reply(status, {"message": message}, reason)


def validate_external_media(
    q: Mapping[str, str], websocket_clients: Collection[str] = ()
) -> Reply | None:
    """The externalMedia checks, in ast_ari_channels_external_media()'s order; None: fine.

    Answers as recorded (errors) or, where no recording has them, as resource_channels.c
    words them. `websocket_clients` are the websocket_client.conf entries (client mode).
    An unknown format is the recorded 500 (the channel cannot be allocated); an AudioSocket
    `data` that is not a UUID, or a refused connection, fails the same way later.
    """
    transport, encapsulation = q.get("transport") or "udp", q.get("encapsulation") or "rtp"
    connection_type = q.get("connection_type") or "client"
    host = q.get("external_host", "")
    websocket, server = transport == "websocket", connection_type == "server"
    checks: list[tuple[bool, int, str]] = [
        (not q.get("app"), 400, "app cannot be empty"),
        (websocket and encapsulation != "none", 400,
         "encapsulation must be 'none' for websocket transport"),
        (encapsulation == "rtp" and transport != "udp", 400,
         "transport must be 'udp' for rtp encapsulation"),
        (encapsulation == "audiosocket" and transport != "tcp", 400,
         "transport must be 'tcp' for audiosocket encapsulation"),
        (server and not websocket, 400,
         "'server' connection_type can only be used with the websocket transport"),
        (not host and not server, 400,
         "external_host is required for all but websocket server connections"),
        (websocket and not server and host not in websocket_clients, 400,
         "external_host must be a valid websocket_client connection id."),
        (not websocket and not re.fullmatch(r"[^:]+:\d{1,5}", host), 400,
         "external_host must be <host>:<port> for all transports other than websocket"),
        (not q.get("format"), 400, "format cannot be empty"),
        (q.get("direction", "") not in ("", "both", "in", "out"), 400,
         "Invalid direction specified"),
        ((encapsulation, transport) not in SUPPORTED_TRANSPORTS, 501,
         "The encapsulation and/or transport is not supported"),
        (encapsulation == "audiosocket" and not q.get("data"), 400, "data can not be empty"),
        (q.get("format") not in KNOWN_FORMATS, 500, INTERNAL_ERROR),
    ]  # fmt: skip
    for failed, status, message in checks:
        if failed:
            return error_reply(status, message)
    return None


SUPPORTED_TRANSPORTS = frozenset({("rtp", "udp"), ("audiosocket", "tcp"), ("none", "websocket")})


# -- RTP ----------------------------------------------------------------------------------

RTP_HEADER = struct.Struct("!BBHII")
RTP_VERSION_BYTE = 0x80  # V=2, P=0, X=0, CC=0 in every packet recorded from Asterisk


@dataclass(frozen=True, slots=True)
class RtpShape:
    """One format's packet stream as Asterisk sends it on a UnicastRTP channel (facts §9)."""

    payload_type: int
    samples_per_packet: int  # timestamp step per 20 ms packet; also the first timestamp
    payload_bytes: int


ULAW = RtpShape(payload_type=0, samples_per_packet=160, payload_bytes=160)
ALAW = RtpShape(payload_type=8, samples_per_packet=160, payload_bytes=160)
SLIN16 = RtpShape(payload_type=118, samples_per_packet=320, payload_bytes=640)
RTP_SHAPES = {"ulaw": ULAW, "alaw": ALAW, "slin16": SLIN16}


def rtp_header(*, marker: bool, payload_type: int, seq: int, timestamp: int, ssrc: int) -> bytes:
    second = (0x80 if marker else 0) | payload_type
    return RTP_HEADER.pack(
        RTP_VERSION_BYTE, second, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc & 0xFFFFFFFF
    )


def rtp_stream(shape: RtpShape, payload: bytes, *, ssrc: int, first_seq: int) -> list[bytes]:
    """Packetise audio the way Asterisk does: marker 0, ts from one packet's samples, +step.

    The last packet keeps whatever is left (Asterisk sent a 22-byte tail at the end of a sound
    file, facts §9), so nothing is padded.
    """
    size = shape.payload_bytes
    packets = []
    for index, start in enumerate(range(0, len(payload), size)):
        header = rtp_header(
            marker=False,
            payload_type=shape.payload_type,
            seq=first_seq + index,
            timestamp=shape.samples_per_packet * (index + 1),
            ssrc=ssrc,
        )
        packets.append(header + payload[start : start + size])
    return packets


# Asterisk sets the marker on an outgoing frame whose timestamp is off the predicted one by more
# than this (res_rtp_asterisk MAX_TIMESTAMP_SKEW): a new talkspurt after a gap (facts §11).
MAX_TIMESTAMP_SKEW = 640


@dataclass(slots=True)
class EchoStream:
    """What a far end Echo() sends back through a simple_bridge (echo_roundtrip).

    The payload comes back bit-exact with Asterisk's own SSRC and sequence numbers but our
    timestamp rounded down to a whole millisecond (frames carry timing through the bridge:
    3790546583 -> 3790546576 at 8 kHz). First packet marker 0; later a jump of the timestamp
    beyond MAX_TIMESTAMP_SKEW sets the marker (facts §11, not in the recording itself).
    """

    ssrc: int
    seq: int
    samples_per_ms: int = 8
    last_timestamp: int | None = None
    last_samples: int = 160

    def echo(self, packet: bytes) -> bytes | None:
        """The packet Asterisk sends back for one we sent, or None for one it would not echo."""
        if len(packet) < RTP_HEADER.size or packet[0] >> 6 != 2 or packet[0] & 0x30:
            return None  # not RTP, or padding/extension: not something our bridge sends
        _, second, _, timestamp, _ = RTP_HEADER.unpack_from(packet)
        payload = packet[RTP_HEADER.size + 4 * (packet[0] & 0x0F) :]
        stamped = timestamp - timestamp % self.samples_per_ms
        marker = False
        if self.last_timestamp is not None:
            predicted = (self.last_timestamp + self.last_samples) & 0xFFFFFFFF
            marker = abs(stamped - predicted) > MAX_TIMESTAMP_SKEW
        self.last_timestamp, self.last_samples = stamped, len(payload) or self.last_samples
        header = rtp_header(
            marker=marker,
            payload_type=second & 0x7F,
            seq=self.seq,
            timestamp=stamped,
            ssrc=self.ssrc,
        )
        self.seq = (self.seq + 1) & 0xFFFF
        return header + payload


# res_rtp_asterisk defaults in the lab (rtp.conf: strictrtp=yes, probation=4) and its learning
# window, which starts when the remote address is set (at externalMedia time).
STRICT_RTP_PROBATION = 4
STRICT_RTP_LEARN_SECONDS = 5.0


@dataclass(slots=True)
class StrictRtp:
    """Which source addresses Asterisk accepts RTP from (facts §7, rtp_symmetric_probe).

    Packets from `external_host` are accepted at once and lock the stream onto it (echo_roundtrip:
    our very first packet came back). Another source is on probation: its first 4 packets are
    dropped, the 5th is accepted and the stream is locked onto that source (the recording's
    seq 62704-62707 were never `Got`, 62708 was echoed). Once locked, every other source is
    dropped, including `external_host`. After the learning window nothing new is learnt.
    Asterisk also wants consecutive sequence numbers during probation; not modelled.
    """

    remote: tuple[str, int]
    learn_until: float
    locked: tuple[str, int] | None = None
    candidate: tuple[str, int] | None = None
    candidate_packets: int = 0

    def accept(self, source: tuple[str, int], now: float) -> bool:
        if self.locked is None and (source == self.remote or now > self.learn_until):
            self.locked = self.remote
        if self.locked is not None:
            return source == self.locked
        if source != self.candidate:
            self.candidate, self.candidate_packets = source, 0
        self.candidate_packets += 1
        if self.candidate_packets >= STRICT_RTP_PROBATION:
            self.locked = source
        return False


# -- the far end's timeline ---------------------------------------------------------------

# (offset after the bridged moment, kind, payload): kind "rtp" (a packet), "dtmf" (TimedDtmf),
# "hangup" (None).
TimelineItem = tuple[float, str, Any]


def build_timeline(
    script: CallerScript,
    rng: random.Random,
    audio: bytes | None = None,
    audio_start: float | None = None,
    hangup_after: float | None = None,
    echo: bool = False,
    audio_format: str = "ulaw",
) -> list[TimelineItem]:
    """What the far end does after the bridged moment, in time order.

    Inbound RTP is the recorded packets (exact bytes and offsets) or, with `audio`, the same
    header stream as Asterisk's carrying that audio, every 20 ms from `audio_start` (default:
    when the recording's first inbound packet came, else 20 ms). `audio` is µ-law, or with
    `audio_format="slin16"` 16 kHz signed linear big-endian (PT 118, as Asterisk sends it), so a
    wideband caller can be played. An echoing far end sends nothing of its own. The hang-up is
    `hangup_after`, else the recorded caller hang-up.
    """
    items: list[TimelineItem] = []
    if audio is not None:
        first = script.inbound_rtp[0][0] if script.inbound_rtp else 0.02
        start = first if audio_start is None else audio_start
        shape = {"ulaw": ULAW, "alaw": ALAW, "slin16": SLIN16}[audio_format]
        packets = rtp_stream(shape, audio, ssrc=rng.getrandbits(32), first_seq=rng.getrandbits(16))
        items += [(start + 0.020 * index, "rtp", packet) for index, packet in enumerate(packets)]
    elif not echo:
        items += [(offset, "rtp", packet) for offset, packet in script.inbound_rtp]
    items += [(dtmf.offset, "dtmf", dtmf) for dtmf in script.dtmf]
    hangup = script.hangup_offset if hangup_after is None else hangup_after
    if hangup is not None:
        items.append((hangup, "hangup", None))
    items.sort(key=lambda item: item[0])  # stable: equal offsets keep their order
    return items
