"""chan_websocket as Asterisk 23.4.1 runs it: the media socket's protocol core and its adapter.

`WsMediaCore` is `channels/chan_websocket.c` without I/O (pure; no clock, the adapter ticks it):
* events out, plain text or JSON (`f(json)`), in the source's exact forms: MEDIA_START,
  MEDIA_XOFF / MEDIA_XON / QUEUE_DRAINED, MEDIA_MARK_PROCESSED, MEDIA_BUFFERING_COMPLETED,
  DTMF_END, STATUS, ERROR;
* commands in (text frames, at most MAX_TEXT_MESSAGE_LEN = 128 bytes, longer ones ignored):
  ANSWER, HANGUP, START/STOP_MEDIA_BUFFERING, MARK_MEDIA, FLUSH_MEDIA, REPORT_QUEUE_DRAINED,
  GET_STATUS, PAUSE_MEDIA, CONTINUE_MEDIA, SET_MEDIA_DIRECTION (JSON only);
* audio in: each binary message cut into optimal-size frames (a remainder is dropped unless
  buffering), queued; a message arriving while 1000 frames are queued is ignored; MEDIA_XOFF
  when the queue reaches 900, MEDIA_XON (checked at the next tick) once it is below 800;
* `tick()` is one ptime slot of the channel timer (dequeue_frame): marks and other queued
  events at the head go out, then one audio frame is played. A mark is therefore reported once
  the audio queued before it has played. FLUSH_MEDIA drops frames and marks alike and reports
  nothing (the dropped marks are never acknowledged).

`WsMediaLink` is the adapter over an aiohttp WebSocket (server side: `GET /media/<id>`, or
client side: Asterisk dialling out). It re-arms one `loop.call_at` on the ptime grid only while
there is something to play, sends in order through one writer task, and records every message
both ways (`received`, `sent`) and every frame played to the caller (`played`) with loop.time().
On hang-up Asterisk closes the socket with 1000 and sends no HANGUP (recorded).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from bridge.tools.sim.audio import CODECS

log = logging.getLogger(__name__)

QUEUE_LENGTH_MAX = 1000
QUEUE_LENGTH_XOFF_LEVEL = 900
QUEUE_LENGTH_XON_LEVEL = 800
MAX_TEXT_MESSAGE_LEN = 128
MAX_MESSAGE = 1 << 20  # what the simulator accepts in one WebSocket message


def _compact(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)  # jansson COMPACT


def _string(body: dict[str, Any], key: str) -> str | None:
    """ast_json_object_string_get(): the value if it is a string, else NULL."""
    value = body.get(key)
    return value if isinstance(value, str) else None


@dataclass(slots=True)
class _Mark:
    """A queued event (AST_CONTROL_OPTION frame): sent when the timer reaches it."""

    text: str


@dataclass(slots=True)
class WsMediaCore:
    connection_id: str
    channel_name: str
    channel_id: str
    fmt: str
    json_control: bool = False
    channel_variables: dict[str, str] = field(default_factory=dict)
    direction: str = "both"  # from the app's view: "out" = app -> Asterisk only
    passthrough: bool = False
    queue: deque[bytes | _Mark] = field(default_factory=deque)
    queue_length: int = 0  # audio frames only, as frame_queue_length
    queue_full: bool = False
    bulk: bool = False
    paused: bool = False
    report_drained: bool = False
    leftover: bytes = b""
    hangup_requested: bool = False
    outbox: list[str] = field(default_factory=list)
    optimal_frame_size: int = 0  # set from the codec (websocket_new)
    ptime: int = 20

    def __post_init__(self) -> None:
        codec = CODECS[self.fmt]
        self.passthrough = self.passthrough or codec.passthrough
        self.optimal_frame_size = 0 if self.passthrough else codec.optimal_frame_size
        self.ptime = codec.default_ms

    # -- events --------------------------------------------------------------------------

    def _event(self, name: str, plain: str, **fields: Any) -> str:
        if self.json_control:
            return _compact({"event": name, "channel_id": self.channel_id, **fields})
        return plain

    def media_start(self) -> str:
        if self.json_control:
            return _compact({
                "event": "MEDIA_START", "connection_id": self.connection_id,
                "channel": self.channel_name, "channel_id": self.channel_id, "format": self.fmt,
                "optimal_frame_size": self.optimal_frame_size, "ptime": self.ptime,
                "channel_variables": dict(self.channel_variables),
            })  # fmt: skip
        return (f"MEDIA_START connection_id:{self.connection_id} channel:{self.channel_name} "
                f"channel_id:{self.channel_id} format:{self.fmt} "
                f"optimal_frame_size:{self.optimal_frame_size} ptime:{self.ptime}")  # fmt: skip

    def _nodata(self, name: str) -> str:
        return self._event(name, name)

    def _with_id(self, name: str, ident: str | None) -> str:
        plain = f"{name} {ident}" if ident else name
        return self._event(name, plain, correlation_id=ident or "")

    def dtmf_end(self, digit: str) -> None:
        plain = f"DTMF_END digit:{digit} channel_id:{self.channel_id}"
        self.outbox.append(self._event("DTMF_END", plain, digit=digit))

    def status(self) -> str:
        flags = {"queue_full": self.queue_full, "bulk_media": self.bulk,
                 "media_paused": self.paused}  # fmt: skip
        plain = (f"STATUS channel_id:{self.channel_id} queue_length:{self.queue_length} "
                 f"xon_level:{QUEUE_LENGTH_XON_LEVEL} xoff_level:{QUEUE_LENGTH_XOFF_LEVEL} "
                 + " ".join(f"{k}:{str(v).lower()}" for k, v in flags.items()))  # fmt: skip
        return self._event("STATUS", plain, queue_length=self.queue_length,
                           xon_level=QUEUE_LENGTH_XON_LEVEL, xoff_level=QUEUE_LENGTH_XOFF_LEVEL,
                           **flags)  # fmt: skip

    def _error(self, text: str) -> None:
        plain = f"ERROR channel_id:{self.channel_id} error_text:{text}"
        self.outbox.append(self._event("ERROR", plain, error_text=text))

    # -- audio from the app ----------------------------------------------------------------

    def _queue_frame(self, frame: bytes) -> None:
        self.queue.append(frame)
        self.queue_length += 1
        if not self.queue_full and self.queue_length >= QUEUE_LENGTH_XOFF_LEVEL:
            self.queue_full = True
            self.outbox.append(self._nodata("MEDIA_XOFF"))

    def receive_binary(self, data: bytes) -> None:
        """process_binary_message(): cut into frames of the optimal size and queue them."""
        if self.direction == "in" or self.queue_length >= QUEUE_LENGTH_MAX:
            return
        if self.passthrough:
            self._queue_frame(data)
            return
        size = self.optimal_frame_size
        if self.bulk and self.leftover:
            needed = size - len(self.leftover)
            self.leftover += data[:needed]
            data = data[needed:]
            if len(self.leftover) < size:
                return
            self._queue_frame(self.leftover)
        self.leftover = b""
        whole = len(data) - len(data) % size
        for start in range(0, whole, size):
            self._queue_frame(data[start : start + size])
        if self.bulk and whole < len(data):
            self.leftover = data[whole:]

    # -- commands from the app -------------------------------------------------------------

    def receive_text(self, payload: bytes) -> None:
        """process_text_message() + handle_command()."""
        if not payload or len(payload) > MAX_TEXT_MESSAGE_LEN:
            return  # Asterisk logs a warning and ignores it
        text = payload.decode("utf-8", "replace").strip()
        ident: str | None
        body: dict[str, Any] = {}
        if self.json_control:
            try:
                loaded = json.loads(text)
            except ValueError:
                loaded = None
            if not isinstance(loaded, dict):
                self._error("Unable to parse JSON command")
                return
            body = loaded
            command, ident = _string(body, "command"), _string(body, "correlation_id")
        else:
            command, _, rest = text.partition(" ")
            ident = rest or None
        handler = _COMMANDS.get(command or "")
        if handler is None:
            log.debug("%s: WebSocket %s command unknown", self.channel_name, command)
            return
        handler(self, command or "", ident, body)

    def _refused(self, command: str, *, media: bool = True) -> bool:
        """The ERROR_ON_PASSTHROUGH_MODE / ERROR_ON_INVALID_MEDIA_DIRECTION checks."""
        if self.passthrough:
            self._error(f"{command} not supported in passthrough mode")
            return True
        if media and self.direction == "in":
            self._error(f"{command} not supported while media direction is 'in'")
            return True
        return False

    def _hangup(self, command: str, ident: str | None, body: dict[str, Any]) -> None:
        self.hangup_requested = True

    def _answer(self, command: str, ident: str | None, body: dict[str, Any]) -> None:
        pass  # the channel answered itself when the socket connected (auto answer)

    def _start_buffering(self, command: str, ident: str | None, body: dict[str, Any]) -> None:
        if not self._refused(command):
            self.bulk = True

    def _stop_buffering(self, command: str, ident: str | None, body: dict[str, Any]) -> None:
        if self._refused(command):
            return
        self.bulk = False
        if self.leftover:
            self._queue_frame(self.leftover)
        self.leftover = b""
        self.queue.append(_Mark(self._with_id("MEDIA_BUFFERING_COMPLETED", ident)))

    def _mark(self, command: str, ident: str | None, body: dict[str, Any]) -> None:
        if not self._refused(command):
            self.queue.append(_Mark(self._with_id("MEDIA_MARK_PROCESSED", ident)))

    def _flush(self, command: str, ident: str | None, body: dict[str, Any]) -> None:
        if self._refused(command, media=False):
            return
        self.queue.clear()  # marks too: they are never reported
        self.queue_length, self.bulk, self.leftover = 0, False, b""

    def _drained(self, command: str, ident: str | None, body: dict[str, Any]) -> None:
        if not self._refused(command, media=False):
            self.report_drained = True

    def _status(self, command: str, ident: str | None, body: dict[str, Any]) -> None:
        self.outbox.append(self.status())

    def _pause(self, command: str, ident: str | None, body: dict[str, Any]) -> None:
        if not self._refused(command):
            self.paused = command == "PAUSE_MEDIA"

    def _set_direction(self, command: str, ident: str | None, body: dict[str, Any]) -> None:
        if self._refused(command, media=False):
            return
        if not self.json_control:
            self._error(f"{command} only supports JSON format.\n")  # sic: the newline
            return
        direction = body.get("direction")
        if not isinstance(direction, str):
            self._error(f"{command} requires a 'direction' parameter.\n")
        elif direction not in ("both", "out", "in"):
            self._error(f"'{direction}' is not a valid direction for {command}.\n")
        else:
            self.direction = direction

    # -- the channel timer ------------------------------------------------------------------

    def tick(self) -> bytes | None:
        """One ptime slot (dequeue_frame): queued events at the head go out, one frame plays."""
        if self.paused:
            return None
        if self.queue_full and self.queue_length < QUEUE_LENGTH_XON_LEVEL:
            self.queue_full = False
            self.outbox.append(self._nodata("MEDIA_XON"))
        if not self.queue:
            if self.report_drained:
                self.report_drained = False
                self.outbox.append(self._nodata("QUEUE_DRAINED"))
            return None
        while self.queue and isinstance(self.queue[0], _Mark):
            mark = self.queue.popleft()
            assert isinstance(mark, _Mark)
            self.outbox.append(mark.text)
        if not self.queue:
            return None
        frame = self.queue.popleft()
        assert isinstance(frame, bytes)
        self.queue_length -= 1
        return frame

    @property
    def idle(self) -> bool:
        """Nothing a tick would do: the adapter may stop its timer."""
        return not self.queue and not self.queue_full and not self.report_drained

    def take_outbox(self) -> list[str]:
        out, self.outbox = self.outbox, []
        return out


_COMMANDS: dict[str, Callable[[WsMediaCore, str, str | None, dict[str, Any]], None]] = {
    "ANSWER": WsMediaCore._answer,
    "HANGUP": WsMediaCore._hangup,
    "START_MEDIA_BUFFERING": WsMediaCore._start_buffering,
    "STOP_MEDIA_BUFFERING": WsMediaCore._stop_buffering,
    "MARK_MEDIA": WsMediaCore._mark,
    "FLUSH_MEDIA": WsMediaCore._flush,
    "REPORT_QUEUE_DRAINED": WsMediaCore._drained,
    "GET_STATUS": WsMediaCore._status,
    "PAUSE_MEDIA": WsMediaCore._pause,
    "CONTINUE_MEDIA": WsMediaCore._pause,
    "SET_MEDIA_DIRECTION": WsMediaCore._set_direction,
}


# -- the adapter ------------------------------------------------------------------------------

WsMessage = tuple[float, str, bytes | str]  # (loop.time(), "text" | "binary", data)
AnyWebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


class WsMediaLink:
    """Asterisk's end of one media WebSocket, over a connected aiohttp socket.

    `on_end(reason)` once: "bridge_hangup" (HANGUP command), "bridge_closed" (the app closed
    or the connection broke). `on_played(frame)` for each frame played to the caller.
    `close(code)` is Asterisk hanging up: a close frame with `code` (1000 on hang-up).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, core: WsMediaCore, *, keep: bool = True
                 ) -> None:  # fmt: skip
        self._loop, self.core, self._keep = loop, core, keep
        self.label = core.channel_name
        self.ws: AnyWebSocket | None = None
        self.received: list[WsMessage] = []
        self.sent: list[WsMessage] = []
        self.played: list[tuple[float, bytes]] = []
        self.end_reason: str | None = None
        self.close_code: int | None = None  # of the close frame that ended the socket
        self.on_end: Callable[[str], None] | None = None
        self.on_played: Callable[[bytes], None] | None = None
        self.echo: Callable[[bytes], None] | None = None  # an Echo() far end, when bridged
        self.closed = loop.create_future()
        self._outgoing: asyncio.Queue[tuple[str, bytes | str] | None] = asyncio.Queue()
        self._grid = 0.0  # the channel timer's phase: ticks at _grid + k * ptime
        self._timer: asyncio.TimerHandle | None = None
        self._writer: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport | None = None  # the TCP connection under it

    def __repr__(self) -> str:
        return f"<WsMediaLink {self.label} queue={self.core.queue_length} end={self.end_reason}>"

    @property
    def is_open(self) -> bool:
        return self.ws is not None and not self.closed.done()

    async def run(self, ws: AnyWebSocket, on_started: Callable[[], None] | None = None) -> None:
        """Serve the socket until it closes: MEDIA_START first, then both directions."""
        self.ws = ws
        self._grid = self._loop.time()
        self._writer = asyncio.create_task(self._write(ws))
        self._send("text", self.core.media_start())
        if on_started is not None:
            on_started()  # the channel answers once MEDIA_START is out (handoff_to_channel)
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    self._record(self.received, "text", message.data)
                    self.core.receive_text(message.data.encode())
                elif message.type == aiohttp.WSMsgType.BINARY:
                    self._record(self.received, "binary", message.data)
                    self.core.receive_binary(message.data)
                    self._arm()
                self._flush_events()
                if self.core.hangup_requested:
                    self._end("bridge_hangup")
                    await self._close(1000)
                    break
        except asyncio.CancelledError:
            self._end("asterisk_closed")  # the simulator stopped or crashed under us
            raise
        finally:
            if self.close_code is None and ws.close_code is not None:
                self.close_code = ws.close_code
            self._end("bridge_closed")
            self._stop_timer()
            self._outgoing.put_nowait(None)
            if self._writer is not None:
                await asyncio.gather(self._writer, return_exceptions=True)
            if not self.closed.done():
                self.closed.set_result(None)

    # -- outgoing --------------------------------------------------------------------------

    def _record(self, into: list[WsMessage], kind: str, data: bytes | str) -> None:
        if self._keep:
            into.append((self._loop.time(), kind, data))

    def _send(self, kind: str, data: bytes | str) -> None:
        if self.end_reason is None:
            self._outgoing.put_nowait((kind, data))

    async def _write(self, ws: AnyWebSocket) -> None:
        while (item := await self._outgoing.get()) is not None:
            kind, data = item
            try:
                if kind == "text":
                    assert isinstance(data, str)
                    await ws.send_str(data)
                else:
                    assert isinstance(data, bytes)
                    await ws.send_bytes(data)
            except (ConnectionError, RuntimeError):
                return  # the socket is closing: nothing more reaches the app
            self._record(self.sent, kind, data)

    def _flush_events(self) -> None:
        for text in self.core.take_outbox():
            self._send("text", text)

    def send_audio(self, frame: bytes) -> None:
        """A frame of the caller's audio (webchan_write); none while the app's direction is out."""
        if frame and self.ws is not None and self.core.direction != "out":
            self._send("binary", frame)

    def send_dtmf(self, digit: str) -> None:
        self.core.dtmf_end(digit)
        self._flush_events()

    # -- the channel timer -------------------------------------------------------------------

    def _arm(self) -> None:
        if self._timer is not None or self.core.idle or self.end_reason is not None:
            return
        ptime = self.core.ptime / 1000
        now = self._loop.time()
        ticks = int((now - self._grid) / ptime) + 1  # the next slot of the 50 Hz grid
        self._timer = self._loop.call_at(self._grid + ticks * ptime, self._tick)

    def _tick(self) -> None:
        self._timer = None
        frame = self.core.tick()
        if frame is not None:
            if self._keep:
                self.played.append((self._loop.time(), frame))
            if self.on_played is not None:
                self.on_played(frame)
            if self.echo is not None:
                self.echo(frame)
        self._flush_events()
        self._arm()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the end -----------------------------------------------------------------------------

    def _end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
            if self.on_end is not None:
                self.on_end(reason)

    async def _close(self, code: int) -> None:
        self._stop_timer()
        self._outgoing.put_nowait(None)
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        if self.ws is not None and not self.ws.closed:
            self.close_code = code
            await self.ws.close(code=code)

    def close(self, code: int = 1000) -> None:
        """Asterisk hangs the channel up: the socket closes with `code` (webchan_hangup)."""
        self._end("asterisk_closed")
        task = asyncio.ensure_future(self._close(code))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def abort(self) -> None:
        """The Asterisk process died: the TCP connection drops without a close frame."""
        self._end("asterisk_closed")
        self._stop_timer()
        self._outgoing.put_nowait(None)
        if self.transport is not None:
            self.transport.abort()
