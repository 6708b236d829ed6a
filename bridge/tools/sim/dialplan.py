"""Calls the dialplan hands straight to the bridge: no ARI, no Stasis, no events.

`dial_audiosocket` is one of two dialplan forms (recorded in `audiosocket_dialplan`):
* `AudioSocket(${UUID()},host:port)` (`application=True`): always 8 kHz (kind 0x10), and
  app_audiosocket hangs up after 2 s with no frame in either direction (the socket closed
  2.002 s after the last frame); the bridge's 0x00 or close returns 0, so the dialplan
  continues (`continued`), an error (a kind Asterisk refuses) or the timeout returns -1;
* `Dial(AudioSocket/host:port/<uuid>/c(slin16))` (`application=False`): 0x12 with
  `slin16=True` (else `c(slin)`: 0x10), no inactivity timeout; the AudioSocket channel hanging
  up ends the Dial, and with Dial's `g` option (`continue_on_hangup`) the dialplan continues.
`dial_websocket` is `Dial(WebSocket/<endpoint>/c(<fmt>)[f(json)]v(k=v,...))`, chan_websocket's
client mode (recorded through ARI in `chan_websocket_client`; the Dial form per the facts file):
Asterisk connects to the entry's URI with the `v()` values as query parameters (the simulator
URI-encodes them, as `${URIENCODE()}` must), subprotocol `media`, no credentials; MEDIA_START's
`connection_id` is the entry's name for every call; the caller hanging up closes with 1000.

Either way the caller is a recorded scenario's far end (`scenario`, `echo`, `hangup_after` as
for `place_call`), its timeline started when the socket connects (Asterisk connected within
~2 ms of the call): its audio converted to the link's format, packet by packet, only while it
talks; its DTMF as 0x03 / DTMF_END. A handle's `ended` resolves to why the call ended:
"bridge_hangup" (0x00 / HANGUP), "bridge_closed", "caller_hangup", "inactivity_timeout",
"protocol_violation", "connect_failed" (Dial: CHANUNAVAIL; AudioSocket(): -1).
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from typing import Any
from urllib.parse import quote

import aiohttp

from bridge.tools.sim import links
from bridge.tools.sim.audio import CODECS
from bridge.tools.sim.audiosocket import AudioSocketLink, Kind, connect_audiosocket
from bridge.tools.sim.broadcast import AsteriskBroadcast
from bridge.tools.sim.chan_websocket import MAX_MESSAGE, WsMediaCore, WsMediaLink
from bridge.tools.sim.media import SimCall
from bridge.tools.sim.recording import TimedDtmf
from bridge.tools.sim.templates import build_timeline

INACTIVITY_SECONDS = 2.0  # app_audiosocket MAX_WAIT_TIMEOUT_MSEC
BRIDGE_ENDED = ("bridge_hangup", "bridge_closed", "protocol_violation")


class DialplanCall:
    """One dialplan call to the bridge; what it sent and received, and how it ended."""

    def __init__(self, loop: asyncio.AbstractEventLoop, label: str, channel_id: str, fmt: str,
                 far_end: SimCall) -> None:  # fmt: skip
        self._loop = loop
        self.label, self.channel_id, self.format = label, channel_id, fmt
        self.far_end = far_end  # the recorded caller's timeline (SimCall as a runner)
        self.link: links.MediaLink | None = None
        self.ended: asyncio.Future[str] = loop.create_future()
        self.continued = False  # the dialplan went on to its next priority
        self.continue_on_hangup = False  # AudioSocket(), or Dial's `g`
        self.dtmf_sent: list[str] = []

    def __repr__(self) -> str:
        state = self.ended.result() if self.ended.done() else "up"
        return f"<{type(self).__name__} {self.label} {state}>"

    @property
    def echo(self) -> bool:
        return self.far_end.echo

    def _start(self, link: links.MediaLink) -> None:
        self.link = link
        links.set_echo(link, self.format, self.far_end.echo)
        self.far_end.start(self._loop.time(), self._play)

    def _play(self, _: SimCall, kind: str, payload: Any) -> None:
        if self.link is None or self.ended.done():
            return
        if kind == "rtp":
            links.play(self.link, self.format, payload)
        elif kind == "dtmf" and isinstance(payload, TimedDtmf):
            self.send_dtmf(payload.digit)
        elif kind == "hangup":
            self.hangup()

    def send_dtmf(self, digit: str) -> None:
        """The caller presses a key: 0x03 + the digit / DTMF_END."""
        if self.link is not None and not self.ended.done():
            self.dtmf_sent.append(digit)
            links.dtmf(self.link, digit)

    def hangup(self) -> None:
        """The caller hangs up: Asterisk closes the socket (AudioSocket: no 0x00; WS: 1000)."""
        self._finish("caller_hangup")

    def _finish(self, reason: str) -> None:
        if self.ended.done() or reason == "asterisk_closed":
            return  # "asterisk_closed": our own close() below, reported by the link
        self.continued = reason in BRIDGE_ENDED and self.continue_on_hangup
        self.far_end.finish("caller" if reason == "caller_hangup" else "app")
        self.ended.set_result(reason)
        if self.link is not None:
            self.link.close()

    def _abort(self) -> None:
        """The Asterisk process died."""
        if self.link is not None:
            self.link.abort()
        if not self.ended.done():
            self.far_end.finish("restart")
            self.ended.set_result("restart")


class DialplanAudioSocketCall(DialplanCall):
    """`received` / `sent`: AsFrame(t, kind, payload) lists; `uuid` the call's UUID."""

    uuid: str
    application: bool

    def _finish(self, reason: str) -> None:
        if self.application and reason == "protocol_violation":
            self.continue_on_hangup = False  # the application returns -1: the caller hangs up
        super()._finish(reason)

    @property
    def received(self) -> list[Any]:
        return self.link.received if isinstance(self.link, AudioSocketLink) else []

    @property
    def sent(self) -> list[Any]:
        return self.link.sent if isinstance(self.link, AudioSocketLink) else []

    def _watch_inactivity(self) -> None:
        """AudioSocket(): 2 s without a frame either way ends the call (recorded: 2.002 s)."""
        if self.ended.done() or not isinstance(self.link, AudioSocketLink):
            return
        deadline = self.link.last_activity + INACTIVITY_SECONDS
        if self._loop.time() >= deadline:
            self.continue_on_hangup = False  # the application returns -1: hang-up
            self._finish("inactivity_timeout")
        else:
            self._loop.call_at(deadline, self._watch_inactivity)


class DialplanWebSocketCall(DialplanCall):
    """`received` / `sent`: (t, "text"|"binary", data); `played`: frames the caller heard."""

    url: str
    media_start: str

    @property
    def ws_link(self) -> WsMediaLink | None:
        return self.link if isinstance(self.link, WsMediaLink) else None

    @property
    def received(self) -> list[Any]:
        return self.ws_link.received if self.ws_link else []

    @property
    def sent(self) -> list[Any]:
        return self.ws_link.sent if self.ws_link else []

    @property
    def played(self) -> list[tuple[float, bytes]]:
        return self.ws_link.played if self.ws_link else []

    @property
    def close_code(self) -> int | None:
        return self.ws_link.close_code if self.ws_link else None

    async def wait_closed(self) -> None:
        if self.ws_link is not None:
            await self.ws_link.closed


def query_string(variables: dict[str, str]) -> str:
    """`v(k=v,...)` with URIENCODE()d names and values, commas turned into `&` (webchan)."""
    safe = "-_.!~*'()"
    return "&".join(f"{quote(k, safe=safe)}={quote(v, safe=safe)}" for k, v in variables.items())


class AsteriskDialplan(AsteriskBroadcast):
    """The dialplan dialling the bridge directly (AudioSocket and WebSocket client mode)."""

    def __init__(self, **core: Any) -> None:
        super().__init__(**core)
        self.dialplan_calls: list[DialplanCall] = []  # every one (history=True)
        self._dialplan_active: set[DialplanCall] = set()

    def _far_end(self, channel_id: str, label: str, scenario: str, echo: bool | None,
                 hangup_after: float | None, audio: bytes | None = None,
                 audio_format: str = "ulaw") -> SimCall:  # fmt: skip
        script = self._script(scenario)
        use_echo = script.echo if echo is None else echo
        timeline = build_timeline(script, self._rng, audio, None, hangup_after, use_echo,
                                  audio_format)  # fmt: skip
        return SimCall(self._running_loop(), scenario, channel_id, label, [], use_echo, timeline)

    def _track(self, call: DialplanCall) -> None:
        self.counts["dialplan_calls"] += 1
        self._dialplan_active.add(call)
        if self._history:
            self.dialplan_calls.append(call)

        def gone(_: asyncio.Future[str]) -> None:
            self._dialplan_active.discard(call)
            self.counts["dialplan_calls_gone"] += 1

        call.ended.add_done_callback(gone)

    def _dialplan_open(self) -> list[str]:
        return [call.label for call in self._dialplan_active if not call.ended.done()]

    async def dial_audiosocket(
        self,
        address: tuple[str, int],
        *,
        uuid: str | None = None,
        slin16: bool = False,
        application: bool = True,
        scenario: str = "basic_ulaw",
        echo: bool | None = None,
        hangup_after: float | None = None,
        continue_on_hangup: bool = False,
        audio: bytes | None = None,
        audio_format: str = "ulaw",
    ) -> DialplanAudioSocketCall:
        """The dialplan runs AudioSocket() (`application=True`) or Dial(AudioSocket/...).

        `audio`, `audio_format`: the caller's audio instead of the recorded one, as for
        `place_call`."""
        loop = self._running_loop()
        call_uuid = uuid or str(uuidlib.UUID(int=self._rng.getrandbits(128), version=4))
        host = f"{address[0]}:{address[1]}"
        fmt = "slin16" if slin16 and not application else "slin"  # the app forces slin
        channel_id = self._new_id()
        label = f"AudioSocket/{host}-{call_uuid}"
        call = DialplanAudioSocketCall(loop, label, channel_id, fmt,
                                       self._far_end(channel_id, label, scenario, echo,
                                                     hangup_after, audio,
                                                     audio_format))  # fmt: skip
        call.uuid, call.application = call_uuid, application
        call.continue_on_hangup = application or continue_on_hangup
        self._track(call)
        try:
            link = await connect_audiosocket(loop, address, label, keep=self._history)
        except OSError:
            call.continue_on_hangup = False
            call._finish("connect_failed")
            return call
        self._links.append(link)
        link.closed.add_done_callback(lambda _: self._links.remove(link))
        link.on_end = call._finish
        link.send(Kind.UUID, uuidlib.UUID(call_uuid).bytes)
        call._start(link)
        if application:
            call._watch_inactivity()
        return call

    async def dial_websocket(
        self,
        url: str,
        *,
        endpoint: str = "pipecat_bridge",
        fmt: str = "slin16",
        json_control: bool = False,
        variables: dict[str, str] | None = None,
        inherited: dict[str, str] | None = None,
        scenario: str = "basic_ulaw",
        echo: bool | None = None,
        hangup_after: float | None = None,
        continue_on_hangup: bool = False,
        audio: bytes | None = None,
        audio_format: str = "ulaw",
    ) -> DialplanWebSocketCall:
        """`Dial(WebSocket/<endpoint>/c(fmt)[f(json)]v(...))` towards `url` (the entry's URI).

        `inherited`: the caller's `__VARS` (name with its prefix), listed in MEDIA_START's
        `channel_variables` after the channel's own two (JSON only). `audio`, `audio_format`:
        as for `place_call`. Returns once MEDIA_START is queued (or the connection failed:
        `ended` is "connect_failed").
        """
        codec = CODECS.get(fmt)
        if codec is None:
            raise ValueError(f"unknown format {fmt!r}")
        loop = self._running_loop()
        channel_id = self._new_id()
        name = f"WebSocket/{endpoint}/0x7f74b8{self._rng.getrandbits(20) << 4:06x}"
        params = query_string(variables or {})
        target = f"{url}{'&' if '?' in url else '?'}{params}" if params else url
        call = DialplanWebSocketCall(loop, name, channel_id, fmt,
                                     self._far_end(channel_id, name, scenario, echo,
                                                   hangup_after, audio,
                                                   audio_format))  # fmt: skip
        call.url, call.continue_on_hangup = target, continue_on_hangup
        self._track(call)
        own = {"MEDIA_WEBSOCKET_CONNECTION_ID": endpoint,
               "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": str(codec.optimal_frame_size)}  # fmt: skip
        core = WsMediaCore(connection_id=endpoint, channel_name=name, channel_id=channel_id,
                           fmt=fmt, json_control=json_control,
                           channel_variables={**own, **(inherited or {})})  # fmt: skip
        call.media_start = core.media_start()
        try:
            ws = await self.client_session().ws_connect(target, protocols=("media",),
                                                        max_msg_size=MAX_MESSAGE)  # fmt: skip
        except (aiohttp.ClientError, OSError):
            call._finish("connect_failed")
            return call
        link = WsMediaLink(loop, core, keep=self._history)
        link.transport = ws.get_extra_info("transport")
        self._links.append(link)
        link.closed.add_done_callback(lambda _: self._links.remove(link))
        link.on_end = call._finish
        started = loop.create_future()
        self._spawn(link.run(ws, on_started=lambda: started.set_result(None)))
        await started
        call._start(link)
        return call

    async def _end_dialplan_calls(self) -> None:
        """stop(): every call still up ends as if the caller hung up."""
        for call in list(self._dialplan_active):
            call.hangup()

    def _forget_all(self) -> None:
        for call in list(self._dialplan_active):
            call._abort()
        super()._forget_all()
