"""The project's one error tree.

    BridgeError
     +-- ParseError                 bad input from a peer; the input is dropped, never the call
     |    +-- RtpParseError         a datagram that is not valid RTP
     |    +-- AriEventError         an ARI event that is not JSON or lacks required fields
     |    +-- BotProtocolError      a bot message that is not valid JSON / base64 / dialect
     |    +-- AudioSocketError      AudioSocket bytes that break the framing; fatal (no resync)
     |    +-- WebSocketControlError a chan_websocket text message we cannot parse
     |    +-- HeartbeatError        a peer's heartbeat variable we cannot read (logged, ignored)
     +-- AriHttpError(status, message)   a non-2xx ARI REST answer
     +-- AriUnavailableError        ARI could not be reached (connect error, timeout)
     +-- BotConnectError            the bot WebSocket could not be opened
     +-- CallStateError             the call state machine was driven wrongly (our bug)
     +-- WebSocketCommandError      a chan_websocket command Asterisk would ignore (our bug)
     +-- ConfigError                bad command line / environment
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error this project raises on purpose."""


class ParseError(BridgeError, ValueError):
    """A peer sent something we cannot use; callers count, log and drop it."""


class RtpParseError(ParseError):
    pass


class AriEventError(ParseError):
    pass


class BotProtocolError(ParseError):
    pass


class AudioSocketError(ParseError):
    pass


class WebSocketControlError(ParseError):
    pass


class HeartbeatError(ParseError):
    pass


class AriHttpError(BridgeError):
    """ARI answered with a non-2xx status; `message` is Asterisk's own text."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"{method} {path} -> {status} {message}")
        self.method = method
        self.path = path
        self.status = status
        self.message = message


class AriUnavailableError(BridgeError):
    pass


class BotConnectError(BridgeError):
    pass


class CallStateError(BridgeError):
    pass


class WebSocketCommandError(BridgeError, ValueError):
    """A command that is too long (Asterisk ignores text over 128 bytes) or malformed."""


class ConfigError(BridgeError):
    pass
