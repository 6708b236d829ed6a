"""The call's media leg, seen from the call: what every transport to Asterisk must offer.

A leg announces what it carries (`formats`: the caller's audio as it hands it on, and what it
takes to send to Asterisk) and what ExternalMedia needs to reach it (`open()`); the call
converts to and from the bot's dialect from those and never learns the transport. RTP over
UDP, AudioSocket over TCP and chan_websocket all fit this shape (`bridge.media.factory`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ari.models import Channel
from rtp.transcode import AudioSpec


@dataclass(frozen=True, slots=True)
class MediaFormats:
    """A leg's audio each way. `rx`: the caller's, as `on_caller_audio` delivers it; `tx`:
    what `play()` takes. They differ where Asterisk does (slin16 over RTP is answered in
    µ-law, asterisk-facts §10)."""

    rx: AudioSpec
    tx: AudioSpec


class MediaEvents(Protocol):
    """What a leg reports to its call."""

    def on_caller_audio(self, payload: bytes) -> None:
        """One frame of the caller's audio in `formats.rx`: what Asterisk sent, in order, or
        silence filled in every 20 ms while the caller sends nothing."""

    def on_caller_dtmf(self, digit: str) -> None:
        """A digit the media stream itself carried (AudioSocket 0x03, chan_websocket
        DTMF_END). An ARI call takes its digits from ChannelDtmfReceived instead."""

    def on_marks_played(self, names: list[str]) -> None:
        """The audio queued before these marks has been played (or was cleared)."""

    def on_playout_drained(self) -> None:
        """After drain(): everything queued has been played."""

    def on_media_failed(self, reason: str) -> None:
        """The media path broke (a send failed, Asterisk never connected, a protocol error)."""

    def on_media_ended(self, reason: str) -> None:
        """Asterisk closed the media stream: for a call from the dialplan alone, the caller
        hung up. An ARI call learns that from its events instead and may ignore this."""


class MediaLeg(Protocol):
    transport: str  # "rtp", "audiosocket", "websocket"
    formats: MediaFormats

    async def open(self) -> Mapping[str, str]:
        """Get ready for Asterisk (bind a socket, register a UUID with a listener); returns
        the POST /channels/externalMedia parameters that reach this leg, besides app and
        channelId: format, encapsulation, transport, external_host, data, ..."""

    def start(self, channel: Channel) -> None:
        """Asterisk's ExternalMedia channel exists (the REST answer): begin relaying. Raises
        ValueError if the channel does not say where Asterisk's media is."""

    def play(self, audio: bytes) -> None:
        """Queue bot audio (in `formats.tx`) of any length."""

    def clear(self) -> None:
        """Barge-in: drop everything queued now, here and in Asterisk."""

    def mark(self, name: str) -> None:
        """Report `name` played once the audio queued before it has been played."""

    def drain(self) -> None:
        """Play out what is queued, then report on_playout_drained."""

    def close(self, *, hangup: bool | None = None) -> None:
        """Stop and release everything; idempotent. `hangup`: also end the call on Asterisk's
        side where the transport can say so (AudioSocket 0x00, chan_websocket HANGUP); None
        is the leg's own default (yes for a call from the dialplan, no under ARI, which hangs
        the channel up itself)."""

    def log_fields(self) -> dict[str, Any]:
        """What to bind to the call's log lines once open (e.g. rtp_port)."""

    def describe(self) -> dict[str, Any]:
        """What to log once started: where Asterisk's side of the media is."""

    def stats(self) -> dict[str, int]: ...
