"""`pipecat-bridge check`: the checks a person would make before starting the service, each
printed as `OK`, `WARN` or `FAIL` with what to change, in the words of the config file to
change (http.conf, ari.conf, modules.conf, rtp.conf) or of the flag. Exit 1 if any failed;
warnings do not fail.

This module is the I/O half and the entry point. `gather()` does all the I/O once: ARI
(`/asterisk/info`, `/asterisk/modules`, `/applications`, `/asterisk/variable?variable=ASTETCDIR`),
Asterisk's config files on this machine, socket binds, a WebSocket handshake to each bot.
The facts it returns, the checks over them and the output lines are pure and live in
`bridge.service.check_rules`; `run_check()` joins the two.

Never a secret: URLs are shown without userinfo or query, header values and passwords are
never printed (ari.conf is read only for its section names).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import os
import socket
import ssl
import sys
from collections.abc import Mapping
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp
import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from ari.rest import normalize_base_url
from bridge.bot.connection import safe_url
from bridge.bot.url import render_bot_url, split_dialect
from bridge.media.factory import parse_listen
from bridge.service.check_rules import (
    AriFacts,
    BotProbe,
    ConfFile,
    Facts,
    Listener,
    ari_conf_users,
    evaluate,
    summary,
)
from bridge.service.config import Settings

DEFAULT_ETC = "/etc/asterisk"
PROBE_TIMEOUT = 3.0


async def gather(s: Settings, asterisk_etc: str = "") -> Facts:
    asterisk_local = not bind_error(s.ari_host, 0, socket.SOCK_DGRAM)
    ari = await probe_ari(s) if s.ari_enabled else None
    etc_dir, etc_from = asterisk_etc, "--asterisk-etc" if asterisk_etc else ""
    if not etc_dir and ari is not None and ari.etc_dir:
        etc_dir, etc_from = ari.etc_dir, "ASTETCDIR"
    guess = etc_dir or (DEFAULT_ETC if asterisk_local else "")
    listeners = []
    for flag, text in (("--audiosocket-listen", s.audiosocket_listen),
                       ("--websocket-listen", s.websocket_listen)):  # fmt: skip
        address = parse_listen(text, flag)
        if address is not None:
            listeners.append(Listener(flag, *address, bind_error(*address, socket.SOCK_STREAM)))
    bots = [("bot", s.bot_url), *((f"bot {name!r} (--bot-map)", url) for name, url in s.bot_map)]
    probes = await asyncio.gather(*(probe_bot(s, label, url) for label, url in bots))
    users = ari_conf_users(read_conf(guess, "ari.conf")) if guess and ari is not None else None
    return Facts(
        ari=ari,
        asterisk_local=asterisk_local,
        etc_dir=etc_dir,
        etc_from=etc_from,
        rtp_conf=read_conf(etc_dir, "rtp.conf") if etc_dir else None,
        http_conf=read_conf(guess, "http.conf") if guess else None,
        ari_users=users,
        rtp_host_error=bind_error(s.rtp_host, 0, socket.SOCK_DGRAM),
        listeners=tuple(listeners),
        bots=tuple(probes),
    )


def read_conf(directory: str, name: str) -> ConfFile:
    path = os.path.join(directory, name)
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return ConfFile(path, fh.read())
    except OSError as exc:
        # A missing file in an existing directory: Asterisk runs on its defaults.
        missing = exc.errno == errno.ENOENT and os.path.isdir(directory)
        return ConfFile(path, None, exc.strerror or str(exc), missing=missing)


def bind_error(host: str, port: int, kind: socket.SocketKind) -> str:
    """'' when (host, port) can be bound here now, else why not (strerror)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return exc.strerror or str(exc)
    family, socktype, proto, _, address = infos[0]
    with socket.socket(family, socktype, proto) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's listeners
        try:
            sock.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return ""


async def probe_ari(s: Settings) -> AriFacts:
    root = normalize_base_url(s.ari_url) + "/ari"
    token = base64.b64encode(f"{s.ari_user}:{s.ari_password}".encode()).decode("ascii")
    headers = {"Authorization": f"Basic {token}"}
    timeout = aiohttp.ClientTimeout(total=min(s.rest_timeout, PROBE_TIMEOUT))
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        try:
            status, info = await _get(session, f"{root}/asterisk/info")
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            return AriFacts("refused" if refused else "unreachable", exc.strerror or str(exc))
        except TimeoutError:
            return AriFacts("timeout", "no answer")
        except aiohttp.ClientError as exc:
            return AriFacts("unreachable", type(exc).__name__)
        if status != 200 or not isinstance(info, dict):
            detail = info.get("message", "") if isinstance(info, dict) else ""
            return AriFacts("http", str(detail), status)
        version = str(info.get("system", {}).get("version", ""))
        modules, apps, etc = await asyncio.gather(
            _get_quietly(session, f"{root}/asterisk/modules"),
            _get_quietly(session, f"{root}/applications"),
            _get_quietly(session, f"{root}/asterisk/variable", {"variable": "ASTETCDIR"}),
        )
    return AriFacts(
        version=version,
        modules=None if not isinstance(modules, list) else {
            _module_base(str(m.get("name", ""))): str(m.get("status", "")) for m in modules
        },
        applications=None if not isinstance(apps, list) else tuple(
            str(a.get("name", "")) for a in apps
        ),
        etc_dir=str(etc.get("value", "")) if isinstance(etc, dict) else "",
    )  # fmt: skip


def _module_base(name: str) -> str:
    return name[:-3] if name.endswith(".so") else name


async def _get(
    session: aiohttp.ClientSession, url: str, params: Mapping[str, str] | None = None
) -> tuple[int, Any]:
    async with session.get(url, params=params) as resp:
        try:
            return resp.status, await resp.json(content_type=None)
        except ValueError:
            return resp.status, None


async def _get_quietly(
    session: aiohttp.ClientSession, url: str, params: Mapping[str, str] | None = None
) -> Any:
    try:
        status, body = await _get(session, url, params)
    except (TimeoutError, aiohttp.ClientError):
        return None
    return body if status == 200 else None


async def probe_bot(s: Settings, label: str, template: str) -> BotProbe:
    """One WebSocket handshake, closed at once with 1000; the URL's placeholders filled as a
    call named "check" would fill them."""
    url, _dialect = split_dialect(
        render_bot_url(template, {"call_id": "check", "channel_id": "check"})
    )
    shown = safe_url(url)
    extra: dict[str, Any] = {}
    try:
        if s.bot_ca_file and url.startswith("wss://"):
            extra["ssl"] = ssl.create_default_context(cafile=s.bot_ca_file)
        async with connect(url, additional_headers=s.bot_headers or None, compression=None,
                           open_timeout=min(s.bot_connect_timeout, PROBE_TIMEOUT),
                           close_timeout=1.0, **extra):  # fmt: skip
            pass
    except InvalidStatus as exc:
        code = exc.response.status_code
        return BotProbe(label, shown, f"handshake answered HTTP {code}", code)
    except TimeoutError:
        return BotProbe(label, shown, "no handshake within "
                        f"{min(s.bot_connect_timeout, PROBE_TIMEOUT):g} s")  # fmt: skip
    except ConnectionRefusedError:
        return BotProbe(label, shown, "connection refused")
    except (OSError, websockets.WebSocketException) as exc:
        return BotProbe(label, shown, _scrub(s, url, f"{type(exc).__name__}: {exc}"))
    return BotProbe(label, shown)


def _scrub(s: Settings, url: str, text: str) -> str:
    parts = urlsplit(url)
    for secret in (parts.query, parts.username, parts.password, *(v for _, v in s.bot_headers)):
        if secret:
            text = text.replace(secret, "***")
    return text.replace(url, safe_url(url))


async def run_check(s: Settings, asterisk_etc: str = "", out: TextIO | None = None) -> int:
    """Print one line per check and a summary; 1 if any check failed, else 0."""
    out = out or sys.stdout
    results = evaluate(s, await gather(s, asterisk_etc))
    for result in results:
        print(result.line(), file=out)
    text, code = summary(results)
    print(f"\n{text}", file=out)
    return code
