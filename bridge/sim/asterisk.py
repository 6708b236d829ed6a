"""SimulatedAsterisk: a test double of Asterisk 23.4.1's ARI + ExternalMedia over real sockets.

Theory of operation. An aiohttp server on 127.0.0.1 answers ARI REST and the events WebSocket;
one UDP socket per UnicastRTP channel plays Asterisk's RTP side. Channels and bridges are state,
not a replay: each request changes the state and emits the events a real Asterisk emits for
that change, in the recorded per-channel order, rendered from recorded templates (templates.py).

A call (`place_call`) is a caller channel in Stasis. When it and a UnicastRTP channel end up in
one bridge (the *bridged moment*), the recorded far end plays from that moment on: its inbound
RTP, its DTMF, its hang-up, all on one deadline-driven timer (`loop.call_at`), or an Echo()
that reflects what the bridge sends. Asterisk sends no RTP before that moment (facts §8).

What real Asterisk did that the double keeps (see the facts file and the recordings):
* the UnicastRTP StasisStart may come before the externalMedia answer (`em_stasis_delay` < 0);
  until it comes, addChannel of that channel answers 422;
* DELETE of our channel: HangupRequest(32, soft) -> [Varset BRIDGEPEER ''] -> [LeftBridge] ->
  StasisEnd (-> Varset STASISSTATUS, ChannelDestroyed for the UnicastRTP channel only);
  the far end hanging up: HangupRequest(16) -> ... -> StasisEnd, and nothing is torn down for you;
* no events while no events socket is connected, and nothing is replayed afterwards;
* strict RTP, Asterisk always sends to external_host, payload types > 34 dropped.
"""

from __future__ import annotations

import asyncio
import base64
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from uuid import uuid4

import structlog
from aiohttp import WSMsgType, web

from bridge.sim.recording import FIXTURES_DIR, CallerScript, load_recording
from bridge.sim.templates import Templates, dumps, format_timestamp

log = structlog.get_logger("bridge.sim")
