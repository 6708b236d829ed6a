"""Settings from the command line, each flag also readable from a BRIDGE_* environment variable
(so systemd can use an EnvironmentFile). The flag wins over the environment."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from bridge.errors import ConfigError
from bridge.ports import parse_port_range

FORMATS = ("ulaw",)
DIALECTS = ("twilio",)


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
    password_file = raw.pop("ari_password_file", None)
    if password_file and "ari_password" not in raw:
        try:
            with open(password_file, encoding="utf-8") as fh:
                raw["ari_password"] = fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --ari-password-file: {exc.strerror}") from None
    return _validate(raw)


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
    if "rtp_ports" in raw:
        kwargs["rtp_ports"] = parse_port_range(raw["rtp_ports"])
    if "silence_fill" in raw:
        kwargs["silence_fill"] = raw["silence_fill"].strip().lower() not in ("0", "false", "no")
    settings = Settings(**kwargs)  # type: ignore[arg-type]
    if settings.format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}")
    if settings.dialect not in DIALECTS:
        raise ConfigError(f"--dialect must be one of {', '.join(DIALECTS)}")
    if settings.log_format not in ("json", "console"):
        raise ConfigError("--log-format must be json or console")
    if urlsplit(settings.ari_url).scheme not in ("http", "https"):
        raise ConfigError("--ari-url must start with http:// or https://")
    if urlsplit(settings.bot_url).scheme not in ("ws", "wss"):
        raise ConfigError("--bot-url must start with ws:// or wss://")
    if not settings.ari_password:
        raise ConfigError("no ARI password: give --ari-password-file or $BRIDGE_ARI_PASSWORD")
    return settings


def parse_settings(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Settings:
    namespace = build_parser().parse_args(argv)
    return settings_from(namespace, os.environ if env is None else env)
