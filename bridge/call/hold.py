"""What the caller hears while the bot is away: the runner's I/O for StartHold and StopHold.

    silence  nothing to do: the media leg sends silence whenever it has no bot audio, so the
             RTP (or AudioSocket, chan_websocket) stream to Asterisk never stops
    tone     a soft comfort tone (`bridge.media.tone`), one burst per period pushed into the
             leg, which paces it on the shared playout clock; cleared when the bot is back
    moh      Asterisk's music on hold on the caller's channel: POST /channels/{id}/moh, then
             DELETE /channels/{id}/moh (ARI calls only; a call from the dialplan has no
             channel to ask about, so it gets silence)
"""

from __future__ import annotations

import asyncio

from ari.rest import AriRestClient
from bridge.media.leg import MediaLeg
from bridge.media.tone import TONE_PERIOD, comfort_tone


class CallerHold:
    def __init__(
        self, mode: str, leg: MediaLeg, rest: AriRestClient | None, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.mode = mode
        self._leg = leg
        self._rest = rest
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._tone = b""

    def _moh(self, channel_id: str) -> AriRestClient | None:
        return self._rest if self.mode == "moh" and channel_id else None

    async def start(self, channel_id: str) -> None:
        rest = self._moh(channel_id)
        if rest is not None:
            await rest.request("POST", f"/channels/{channel_id}/moh", idempotent=True)
        elif self.mode == "tone" and self._timer is None:
            self._tone = self._tone or comfort_tone(self._leg.formats.tx)
            self._burst()

    async def stop(self, channel_id: str) -> None:
        rest = self._moh(channel_id)
        if rest is not None:
            await rest.request("DELETE", f"/channels/{channel_id}/moh", idempotent=True)
        elif self._timer is not None:
            self.close()
            self._leg.clear()  # the rest of the burst: the bot speaks now

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _burst(self) -> None:
        self._leg.play(self._tone)
        self._timer = self._loop.call_later(TONE_PERIOD, self._burst)

    def __repr__(self) -> str:
        return f"CallerHold({self.mode!r}, playing={self._timer is not None})"

