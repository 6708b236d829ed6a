"""Settings from the command line, each flag also readable from a BRIDGE_* environment variable
(so systemd can use an EnvironmentFile). The flag wins over the environment."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from bridge.errors import ConfigError
from bridge.ports import PortPool, parse_port_range

FORMATS = ("ulaw",)
DIALECTS = ("twilio",)
LOG_LEVELS = ("debug", "info", "warning", "error")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class Settings:
    ari_url: str = "http://127.0.0.1:8088"
    ari_user: str = "asterisk"
    ari_password: str = ""
    app: str = "pipecat"
    bot_url: str = "ws://127.0.0.1:8765/ws"
    rtp_host: str = "127.0.0.1"
    rtp_ports: tuple[int, int] = (20000, 20999)
    format: str = "ulaw"
    dialect: str = "twilio"
    silence_fill: bool = True
    max_queue_ms: int = 2000
    bot_connect_timeout: float = 3.0
    setup_timeout: float = 10.0
    rest_timeout: float = 5.0
    id_prefix: str = "pcb-"
    log_format: str = "console"
    log_level: str = "info"

    @property
    def ari_host(self) -> str:
        return urlsplit(self.ari_url).hostname or "127.0.0.1"


# flag, env var, Settings field, help
_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--ari-url", "ari_url", "Asterisk HTTP server URL, with or without /ari"),
    ("--ari-user", "ari_user", "ARI user (ari.conf)"),
    ("--ari-password", "ari_password", "ARI password (prefer --ari-password-file)"),
    ("--ari-password-file", "ari_password_file", "file holding the ARI password"),
    ("--app", "app", "Stasis application name (dialplan Stasis(NAME))"),
    ("--bot-url", "bot_url", "bot URL template: {call_id} {channel_id} {caller} {called}"),
    ("--rtp-host", "rtp_host", "local address for ExternalMedia RTP sockets"),
    ("--rtp-ports", "rtp_ports", "local port range LOW-HIGH (must not overlap rtp.conf's)"),
    ("--format", "format", f"ExternalMedia audio format: {', '.join(FORMATS)}"),
    ("--dialect", "dialect", f"bot WebSocket dialect: {', '.join(DIALECTS)}"),
    ("--max-queue-ms", "max_queue_ms", "most bot audio queued per call, in ms"),
    ("--bot-connect-timeout", "bot_connect_timeout", "seconds to open the bot WebSocket"),
    ("--setup-timeout", "setup_timeout", "seconds for a call's whole set-up"),
    ("--rest-timeout", "rest_timeout", "seconds for one ARI REST request"),
    ("--id-prefix", "id_prefix", "prefix of the bridge and channel ids this service creates"),
    ("--log-format", "log_format", "json (systemd) or console"),
    ("--log-level", "log_level", "debug, info, warning, error"),
)


def _env_name(field: str) -> str:
    return "BRIDGE_" + field.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipecat-bridge", description="Asterisk ARI ExternalMedia <-> Pipecat bot bridge"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the bridge service")
    for flag, field, help_text in _FLAGS:
        run.add_argument(flag, dest=field, default=None, help=f"{help_text} [${_env_name(field)}]")
    run.add_argument(
        "--no-silence-fill",
        dest="silence_fill",
        action="store_const",
        const="false",
        default=None,
        help="send no RTP while the bot is quiet [$BRIDGE_SILENCE_FILL=false]",
    )
    return parser


def settings_from(namespace: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    raw: dict[str, str] = {}
    for _flag, field, _help in (*_FLAGS, ("", "silence_fill", "")):
        value = getattr(namespace, field, None)
        if value is None:
            value = env.get(_env_name(field))
        if value is not None:
            raw[field] = value
    raw.pop("ari_password_file", None)
    raw.pop("ari_password", None)
    password = _password(namespace, env)
    if password is not None:
        raw["ari_password"] = password
    return _validate(raw)


def _password(namespace: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    """--ari-password, else --ari-password-file, else the same two from the environment:
    a flag of either kind wins over both environment variables."""
    for given, path in (
        (getattr(namespace, "ari_password", None), getattr(namespace, "ari_password_file", None)),
        (env.get(_env_name("ari_password")), env.get(_env_name("ari_password_file"))),
    ):
        if given is not None:
            return given
        if path:
            return _read_password_file(path)
    return None


def _read_password_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read --ari-password-file: {exc.strerror}") from None


def _validate(raw: dict[str, str]) -> Settings:
    kwargs: dict[str, object] = dict(raw)
    try:
        for name in ("max_queue_ms",):
            if name in raw:
                kwargs[name] = int(raw[name])
        for name in ("bot_connect_timeout", "setup_timeout", "rest_timeout"):
            if name in raw:
                kwargs[name] = float(raw[name])
    except ValueError as exc:
        raise ConfigError(f"bad number: {exc}") from None
    for name in ("max_queue_ms", "bot_connect_timeout", "setup_timeout", "rest_timeout"):
        number = kwargs.get(name)
        # 0 or a negative timeout would mean "no timeout" to aiohttp; nan and inf break timers.
        if isinstance(number, int | float) and not (math.isfinite(number) and number > 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive number")
    if "rtp_ports" in raw:
        low, high = parse_port_range(raw["rtp_ports"])
        PortPool(low, high)  # a range with no even port fails here, not at start-up
        kwargs["rtp_ports"] = (low, high)
    if "silence_fill" in raw:
        kwargs["silence_fill"] = _bool(raw["silence_fill"])
    settings = Settings(**kwargs)  # type: ignore[arg-type]
    if settings.format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}")
    if settings.dialect not in DIALECTS:
        raise ConfigError(f"--dialect must be one of {', '.join(DIALECTS)}")
    if settings.log_format not in ("json", "console"):
        raise ConfigError("--log-format must be json or console")
    if settings.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    if urlsplit(settings.ari_url).scheme not in ("http", "https"):
        raise ConfigError("--ari-url must start with http:// or https://")
    if urlsplit(settings.bot_url).scheme not in ("ws", "wss"):
        raise ConfigError("--bot-url must start with ws:// or wss://")
    if not settings.ari_password:
        raise ConfigError("no ARI password: give --ari-password-file or $BRIDGE_ARI_PASSWORD")
    return settings


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"$BRIDGE_SILENCE_FILL must be one of {', '.join(_TRUE + _FALSE)}")


def parse_settings(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Settings:
    namespace = build_parser().parse_args(argv)
    return settings_from(namespace, os.environ if env is None else env)
