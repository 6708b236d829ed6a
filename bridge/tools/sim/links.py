"""The far end heard through an AudioSocket or chan_websocket link: one small set of verbs.

A simulated caller's timeline holds recorded RTP packets; whichever media leg the call is
bridged with turns one packet into one frame of its own format and sends it; caller DTMF goes
out as the transport's DTMF (0x03, DTMF_END); an Echo() far end reflects what the bridge sends,
through the caller's µ-law leg. Used by ARI media channels and dialplan calls alike.
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.tools.sim.audio import decode, encode, rtp_to_format, through_ulaw
from bridge.tools.sim.audiosocket import FORMAT_OF_KIND, AudioSocketLink, Kind, kind_for_format
from bridge.tools.sim.chan_websocket import WsMediaLink

MediaLink = AudioSocketLink | WsMediaLink


def play(link: MediaLink, fmt: str, packet: bytes) -> None:
    """One packet of the far end's audio, as Asterisk writes it to the link."""
    frame = rtp_to_format(packet, fmt)
    if not frame:
        return
    if isinstance(link, AudioSocketLink):
        link.send(kind_for_format(fmt), frame)
    else:
        link.send_audio(frame)


def dtmf(link: MediaLink, digit: str) -> None:
    if isinstance(link, AudioSocketLink):
        link.send(Kind.DTMF, digit.encode("ascii"))
    else:
        link.send_dtmf(digit)


def set_echo(link: MediaLink, fmt: str, enabled: bool) -> None:
    """An Echo() far end on the other side of the bridge, or none (`enabled=False`)."""
    if isinstance(link, AudioSocketLink):
        link.echo = _audiosocket_echo(link, fmt) if enabled else None
    else:
        link.echo = (lambda frame: link.send_audio(through_ulaw(frame, fmt))) if enabled else None


def _audiosocket_echo(link: AudioSocketLink, fmt: str) -> Callable[[int, bytes], None]:
    kind = kind_for_format(fmt)

    def echo(received_kind: int, payload: bytes) -> None:
        # Asterisk translates any slin rate to the channel's format; the echo comes back in it.
        audio = decode(payload, FORMAT_OF_KIND.get(Kind(received_kind), "slin"))
        if audio is None:
            return
        frame = encode(audio[0], audio[1], fmt)
        if frame:
            link.send(kind, through_ulaw(frame, fmt))

    return echo


def close(link: MediaLink) -> None:
    link.close()


def abort(link: MediaLink) -> None:
    link.abort()
