"""The call's media leg, seen from the call: what every transport to Asterisk must offer.

RTP over UDP (ExternalMedia `encapsulation=rtp`) is the first; AudioSocket and chan_websocket
fit the same shape. The call never learns which one it talks to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ari.models import Channel


class MediaEvents(Protocol):
    """What a leg reports to its call."""

    def on_caller_audio(self, payload: bytes) -> None:
        """One frame of the caller's audio, in the call's format: what Asterisk sent, in
        sequence order, or silence filled in every 20 ms while the caller sends nothing."""

    def on_marks_played(self, names: list[str]) -> None:
        """The audio queued before these marks has been sent (or was cleared)."""

    def on_playout_drained(self) -> None:
        """After drain(): everything queued has been sent."""

    def on_media_failed(self, reason: str) -> None: ...


class MediaLeg(Protocol):
    def external_media_params(self) -> Mapping[str, str]:
        """The encapsulation/transport query parameters of POST /channels/externalMedia."""

    async def open(self) -> str:
        """Bind the local endpoint; returns the `external_host` to give Asterisk."""

    def start(self, channel: Channel) -> None:
        """Asterisk's ExternalMedia channel exists: begin relaying. Raises ValueError if the
        channel does not say where Asterisk's media is."""

    def play(self, audio: bytes) -> None:
        """Queue bot audio of any length."""

    def clear(self) -> None:
        """Barge-in: drop everything queued now."""

    def mark(self, name: str) -> None:
        """Report `name` played once the audio queued before it has been sent."""

    def drain(self) -> None:
        """Play out what is queued, then report on_playout_drained."""

    def close(self) -> None:
        """Stop and release everything; idempotent."""

    def stats(self) -> dict[str, int]: ...
