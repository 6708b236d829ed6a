"""Settings from the command line, each flag also readable from a BRIDGE_* environment variable
(so systemd can use an EnvironmentFile). The flag wins over the environment."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from bridge.bot.control import RecordMode
from bridge.call.reconnect import HOLD_MODES, ReconnectPolicy
from bridge.call.recorder import DEFAULT_RECORD_NAME, RECORD_FORMATS, render_record_name
from bridge.call.transfer import RINGBACK_MODES, TransferPolicy
from bridge.errors import ConfigError
from bridge.media.factory import TRANSPORTS, parse_listen
from bridge.media.ports import PortPool, parse_port_range
from bridge.secrets import read_secret_file
from bridge.service.peers import Scope

FORMATS = ("ulaw", "alaw", "slin", "slin16")
RECORD_MODES = tuple(m.value for m in RecordMode)
CONTROL_FORMATS = ("plain", "json")
DIALECTS = ("twilio", "exotel", "vonage")
FALLBACKS = ("hangup", "continue")
LOG_LEVELS = ("debug", "info", "warning", "error")
_TRUE = ("1", "true", "yes", "on")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
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
    transport: str = "rtp"
    # Listeners for media Asterisk brings to us: AudioSocket (ARI externalMedia and the
    # dialplan's AudioSocket()/Dial(AudioSocket/...)) and chan_websocket client mode
    # (Dial(WebSocket/...)). "" turns one off.
    audiosocket_listen: str = "127.0.0.1:9092"
    websocket_listen: str = "127.0.0.1:9093"
    # chan_websocket control messages asked for in ARI calls: plain text (every version) or
    # JSON (transport_data=f(json), Asterisk 20.18 / 22.8 / 23.2 and later).
    websocket_control: str = "plain"
    # NAME -> bot URL, for calls that can only name a bot (chan_websocket v(bot=NAME)).
    bot_map: tuple[tuple[str, str], ...] = ()
    dialect: str = "twilio"
    silence_fill: bool = True
    caller_silence_fill: bool = True
    max_queue_ms: int = 2000
    playout_reserve_ms: int = 40
    reorder_window_ms: int = 40
    bot_connect_timeout: float = 3.0
    bot_stall_timeout: float = 5.0
    bot_ca_file: str = ""
    bot_headers: tuple[tuple[str, str], ...] = ()
    # A bot dropping mid-call (1001/1006/1011/1012/1013) is re-dialled for this long (0: off),
    # at most this many times per call, the caller hearing silence, a tone or music on hold.
    bot_reconnect_window: float = 3.0
    bot_reconnect_max: int = 3
    bot_reconnect_hold: str = "silence"
    fallback: str = "hangup"
    fallback_context: str = ""
    fallback_extension: str = "s"
    fallback_priority: int = 1
    fallback_sound: str = ""
    max_calls: int = 0
    # Broadcast calls (StasisBroadcast): the longest a loaded process waits before claiming
    # (its delay grows with its load; an idle one claims at once).
    claim_max_delay_ms: int = 150
    drain_timeout: float = 30.0
    setup_timeout: float = 10.0
    rest_timeout: float = 5.0
    id_prefix: str = "pcb-"
    log_format: str = "console"
    log_level: str = "info"
    # The operations surface (bridge/ops): HTTP API and /metrics; "" turns it off. Bound to
    # anything but loopback it requires a bearer token.
    http_listen: str = "127.0.0.1:8089"
    http_token: str = ""  # from --http-token-file; never logged
    # Pipecat's TwilioFrameSerializer(base_url=...) hangs calls up through this account.
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""  # from --twilio-auth-token-file; never logged
    # An expected dialplan call (POST /calls/expected) not used within this long expires.
    expect_ttl: float = 30.0
    # Lifecycle webhooks: global receivers, the whsec_ secret, the spool (default: the
    # systemd StateDirectory).
    webhook_urls: tuple[str, ...] = ()
    webhook_secret_file: str = ""
    webhook_spool: str = ""
    # --workers N (bridge.service.supervisor): N > 1 makes this process a supervisor of N
    # worker processes named after --instance-id ("": from the host name).
    workers: int = 1
    instance_id: str = ""
    # Callers a dead run left waiting in the app go here once (e.g. the broadcast extension),
    # so a live worker takes them; "" context: the fallback, as before.
    orphan_context: str = ""
    orphan_extension: str = "s"
    # Several hosts on one Asterisk (bridge.service.peers): a heartbeat in an Asterisk global
    # variable every heartbeat_interval; a peer silent for peer_grace (wall clock: NTP) is
    # dead and one live peer sweeps its leftovers (0: off, no heartbeat). A supervisor gives
    # its workers the host's scope (`<app>-<instance>-{tag} <prefix><instance>-{tag}-`) and
    # lets only slot 0 sweep; "" scope: this process's own --app and --id-prefix.
    peer_grace: float = 15.0
    heartbeat_interval: float = 3.0
    peer_scope: str = ""
    peer_sweep: bool = True
    # Transfers a bot asks for (bridge.call.transfer): the targets it may dial (fnmatch
    # patterns, comma-separated), and what the caller hears while one rings.
    transfer_allow: tuple[str, ...] = ("*",)
    transfer_ringback: str = "ring"
    transfer_attended_ringback: str = "none"
    # Recording (bridge.call.recorder): none (only when the bot asks), mixed or tracks; the
    # name under Asterisk's recording directory; whether it goes on after a transfer.
    record: str = "none"
    record_name: str = DEFAULT_RECORD_NAME
    record_format: str = "wav"
    record_on_transfer: str = "keep"

    @property
    def ari_enabled(self) -> bool:
        """Without ARI credentials the service serves only calls from the dialplan."""
        return bool(self.ari_password)

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
    ("--format", "format", f"audio format to Asterisk: {', '.join(FORMATS)}"),
    ("--transport", "transport", f"media transport for ARI calls: {', '.join(TRANSPORTS)}"),
    (
        "--audiosocket-listen",
        "audiosocket_listen",
        "HOST:PORT of the AudioSocket listener ('' = off)",
    ),
    (
        "--websocket-listen",
        "websocket_listen",
        "HOST:PORT of the chan_websocket client-mode listener, path /media ('' = off)",
    ),
    (
        "--websocket-control",
        "websocket_control",
        "chan_websocket control messages in ARI calls: plain or json (Asterisk >= 23.2)",
    ),
    ("--bot-map", "bot_map", "bots by name, for v(bot=NAME) and bot=NAME args: NAME=URL[,...]"),
    ("--dialect", "dialect", f"bot WebSocket dialect: {', '.join(DIALECTS)}"),
    ("--max-queue-ms", "max_queue_ms", "most bot audio queued per call, in ms"),
    ("--playout-reserve-ms", "playout_reserve_ms", "bot audio held before a talkspurt starts"),
    (
        "--reorder-window-ms",
        "reorder_window_ms",
        "how long a caller RTP gap waits for late packets",
    ),
    (
        "--bot-connect-timeout",
        "bot_connect_timeout",
        "seconds to open the bot WebSocket, retries included",
    ),
    (
        "--bot-stall-timeout",
        "bot_stall_timeout",
        "seconds a bot may stop reading before it is failed",
    ),
    ("--bot-ca-file", "bot_ca_file", "PEM CA bundle trusted for wss:// bots (default: system CAs)"),
    (
        "--bot-headers-file",
        "bot_headers_file",
        "file of 'Name: value' lines sent when connecting to the bot",
    ),
    (
        "--bot-reconnect-window",
        "bot_reconnect_window",
        "seconds a bot that drops mid-call may take to come back (0: end the call at once)",
    ),
    ("--bot-reconnect-max", "bot_reconnect_max", "most resumed bot sessions per call"),
    (
        "--bot-reconnect-hold",
        "bot_reconnect_hold",
        f"what the caller hears while the bot is away: {', '.join(HOLD_MODES)}",
    ),
    ("--fallback", "fallback", "when the bot fails or the bridge is full: hangup or continue"),
    ("--fallback-context", "fallback_context", "dialplan context for --fallback continue"),
    ("--fallback-extension", "fallback_extension", "dialplan extension for --fallback continue"),
    ("--fallback-priority", "fallback_priority", "dialplan priority for --fallback continue"),
    ("--fallback-sound", "fallback_sound", "media played before the fallback, e.g. sound:sorry"),
    ("--max-calls", "max_calls", "most concurrent calls (0: as many as --rtp-ports allows)"),
    (
        "--claim-max-delay-ms",
        "claim_max_delay_ms",
        "StasisBroadcast: longest claim delay of a loaded process (idle: 0), in ms",
    ),
    ("--drain-timeout", "drain_timeout", "seconds calls may go on after SIGTERM"),
    ("--setup-timeout", "setup_timeout", "seconds for a call's whole set-up"),
    ("--rest-timeout", "rest_timeout", "seconds for one ARI REST request"),
    ("--id-prefix", "id_prefix", "prefix of the bridge and channel ids this service creates"),
    ("--log-format", "log_format", "json (systemd) or console"),
    ("--log-level", "log_level", "debug, info, warning, error"),
    ("--http-listen", "http_listen", "HOST:PORT of the HTTP API and /metrics ('' = off)"),
    (
        "--http-token-file",
        "http_token_file",
        "file holding the API's bearer token (required off loopback)",
    ),
    ("--twilio-account-sid", "twilio_account_sid", "account SID for Twilio-style hang-ups"),
    (
        "--twilio-auth-token-file",
        "twilio_auth_token_file",
        "file holding the auth token for Twilio-style hang-ups",
    ),
    ("--expect-ttl", "expect_ttl", "seconds an expected dialplan call waits for its media"),
    ("--webhook-url", "webhook_urls", "lifecycle webhook receivers: URL[,URL...]"),
    ("--webhook-secret-file", "webhook_secret_file", "file holding the whsec_ signing secret"),
    ("--webhook-spool", "webhook_spool", "SQLite file of undelivered webhooks"),
    ("--workers", "workers", "worker processes: N or auto (one per usable CPU); 1: no supervisor"),
    (
        "--instance-id",
        "instance_id",
        "this host's name in app names and ids, [a-z0-9-] (default: from the host name)",
    ),
    (
        "--orphan-context",
        "orphan_context",
        "dialplan context for callers a dead run left waiting (once per call; '' = fallback)",
    ),
    ("--orphan-extension", "orphan_extension", "dialplan extension for --orphan-context"),
    (
        "--peer-grace",
        "peer_grace",
        "seconds a peer bridge's heartbeat may be old before its leftovers are swept (0: off)",
    ),
    (
        "--heartbeat-interval",
        "heartbeat_interval",
        "seconds between this bridge's heartbeats (and its looks at the peers')",
    ),
    (
        "--transfer-allow",
        "transfer_allow",
        "transfer targets a bot may dial: fnmatch patterns, e.g. PJSIP/1*,Local/*@agents",
    ),
    (
        "--transfer-ringback",
        "transfer_ringback",
        f"what a caller hears while a blind transfer rings: {', '.join(RINGBACK_MODES)}",
    ),
    (
        "--transfer-attended-ringback",
        "transfer_attended_ringback",
        f"what a caller hears under the bot while an attended transfer rings: "
        f"{', '.join(RINGBACK_MODES)}",
    ),
    ("--record", "record", "record calls: none (only when the bot asks), mixed or tracks"),
    (
        "--record-name",
        "record_name",
        "recording name under Asterisk's recording dir: {call_id} {channel_id} {start} {date}",
    ),
    ("--record-format", "record_format", f"recording format: {', '.join(RECORD_FORMATS)}"),
    (
        "--record-on-transfer",
        "record_on_transfer",
        "keep recording the caller with the person after a transfer, or stop",
    ),
)


_INTS = (
    "max_queue_ms",
    "playout_reserve_ms",
    "reorder_window_ms",
    "fallback_priority",
    "max_calls",
    "claim_max_delay_ms",
)
_FLOATS = (
    "expect_ttl",
    "bot_connect_timeout",
    "bot_stall_timeout",
    "setup_timeout",
    "rest_timeout",
    "drain_timeout",
    "heartbeat_interval",
)


def _env_name(field: str) -> str:
    return "BRIDGE_" + field.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipecat-bridge", description="Asterisk ARI ExternalMedia <-> Pipecat bot bridge"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_settings_flags(sub.add_parser("run", help="run the bridge service"))
    check = sub.add_parser(
        "check",
        help="check Asterisk, the bot and this machine for the settings `run` would use",
        description="Runs the checks a person would and prints each as OK, WARN or FAIL with "
        "what to change; exits 1 if any failed (warnings do not fail).",
    )
    _add_settings_flags(check)
    check.add_argument(
        "--asterisk-etc",
        dest="asterisk_etc",
        default=None,
        help="Asterisk's config directory on this machine (default: ARI's ASTETCDIR) "
        "[$BRIDGE_ASTERISK_ETC]",
    )
    return parser


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every Settings field: `run` and `check` take the same ones."""
    for flag, field, help_text in _FLAGS:
        parser.add_argument(
            flag, dest=field, default=None, help=f"{help_text} [${_env_name(field)}]"
        )
    parser.add_argument(
        "--no-silence-fill",
        dest="silence_fill",
        action="store_const",
        const="false",
        default=None,
        help="send no RTP while the bot is quiet [$BRIDGE_SILENCE_FILL=false]",
    )
    parser.add_argument(
        "--no-caller-silence-fill",
        dest="caller_silence_fill",
        action="store_const",
        const="false",
        default=None,
        help="send the bot nothing while the caller sends no RTP "
        "[$BRIDGE_CALLER_SILENCE_FILL=false]",
    )
    # Set by a --workers supervisor on its workers (bridge.service.workers), not by people.
    parser.add_argument("--peer-scope", dest="peer_scope", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-peer-sweep", dest="peer_sweep", action="store_const", const="false",
        default=None, help=argparse.SUPPRESS,
    )  # fmt: skip


def settings_from(namespace: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    raw: dict[str, str] = {}
    hidden = ("silence_fill", "caller_silence_fill", "peer_scope", "peer_sweep")
    for _flag, field, _help in (*_FLAGS, *(("", name, "") for name in hidden)):
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
    headers_file = raw.pop("bot_headers_file", None)
    bot_map = _parse_bot_map(raw.pop("bot_map", ""))
    http_token = _secret_from(raw.pop("http_token_file", ""), "--http-token-file")
    twilio_token = _secret_from(raw.pop("twilio_auth_token_file", ""), "--twilio-auth-token-file")
    webhook_urls = _parse_urls(raw.pop("webhook_urls", ""), "--webhook-url", ("http", "https"))
    settings = dataclasses.replace(
        _validate(raw),
        bot_map=bot_map,
        webhook_urls=webhook_urls,
        http_token=http_token,
        twilio_auth_token=twilio_token,
    )
    http = parse_listen(settings.http_listen, "--http-listen")
    if http is not None and not _is_loopback(http[0]) and not settings.http_token:
        raise ConfigError(
            f"--http-listen {settings.http_listen} is not loopback: give --http-token-file"
        )
    if headers_file:
        headers = _read_headers_file(headers_file)
        if urlsplit(settings.bot_url).username is not None and any(
            name.lower() == "authorization" for name, _ in headers
        ):
            # websockets would send both: the URL's Basic credentials and this header.
            raise ConfigError(
                "--bot-url has user:password@ and --bot-headers-file an "
                "Authorization header: keep one"
            )
        settings = dataclasses.replace(settings, bot_headers=headers)
    return settings


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
    return read_secret_file(path, "--ari-password-file").strip()


def _read_headers_file(path: str) -> tuple[tuple[str, str], ...]:
    """'Name: value' per line; blank lines and # comments skipped. Values are secrets (bearer
    tokens): errors name the line number, never its text."""
    headers: list[tuple[str, str]] = []
    text = read_secret_file(path, "--bot-headers-file")
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not _HEADER_NAME.fullmatch(name) or not value or "\r" in value:
            raise ConfigError(f"--bot-headers-file line {number} is not 'Name: value'")
        headers.append((name, value))
    return tuple(headers)


def _secret_from(path: str, flag: str) -> str:
    return read_secret_file(path, flag).strip() if path else ""


def _parse_urls(text: str, flag: str, schemes: tuple[str, ...]) -> tuple[str, ...]:
    urls = tuple(u for u in text.replace(" ", ",").split(",") if u)
    for url in urls:
        if urlsplit(url).scheme not in schemes or not urlsplit(url).hostname:
            raise ConfigError(f"{flag} must be {'|'.join(schemes)}:// URLs, got {url!r}")
    return urls


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_bot_map(text: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for item in text.replace(" ", ",").split(","):
        if not item:
            continue
        name, sep, url = item.partition("=")
        if not sep or not name or urlsplit(url).scheme not in ("ws", "wss"):
            raise ConfigError(f"--bot-map entries are NAME=ws://..., got {item!r}")
        pairs.append((name, url))
    return tuple(pairs)


def _validate(raw: dict[str, str]) -> Settings:
    kwargs: dict[str, object] = dict(raw)
    if "workers" in raw:
        kwargs["workers"] = parse_workers(raw["workers"])
    if raw.get("instance_id") and not _INSTANCE_ID.fullmatch(raw["instance_id"]):
        raise ConfigError("--instance-id must be 1-16 of a-z, 0-9 and '-'")
    try:
        for name in _INTS:
            if name in raw:
                kwargs[name] = int(raw[name])
        for name in _FLOATS:
            if name in raw:
                kwargs[name] = float(raw[name])
    except ValueError as exc:
        raise ConfigError(f"bad number: {exc}") from None
    for name in ("playout_reserve_ms", "reorder_window_ms", "max_calls", "claim_max_delay_ms"):
        if int(kwargs.get(name, 0)) < 0:  # type: ignore[call-overload]
            raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
    for name in ("max_queue_ms", "fallback_priority", *_FLOATS):
        number = kwargs.get(name)
        # 0 or a negative timeout would mean "no timeout" to aiohttp; nan and inf break timers.
        if isinstance(number, int | float) and not (math.isfinite(number) and number > 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive number")
    if "rtp_ports" in raw:
        low, high = parse_port_range(raw["rtp_ports"])
        PortPool(low, high)  # a range with no even port fails here, not at start-up
        kwargs["rtp_ports"] = (low, high)
    for name in ("silence_fill", "caller_silence_fill", "peer_sweep"):
        if name in raw:
            kwargs[name] = _bool(raw[name], name)
    if "peer_grace" in raw:
        kwargs["peer_grace"] = _peer_grace(raw["peer_grace"])
    kwargs.update(_reconnect_settings(raw))
    if "transfer_allow" in raw:
        kwargs["transfer_allow"] = tuple(
            p.strip() for p in raw["transfer_allow"].split(",") if p.strip()
        )
    settings = Settings(**kwargs)  # type: ignore[arg-type]
    _check_transfer_and_record(settings)
    _check_peers(settings)
    if settings.format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}")
    if settings.transport not in TRANSPORTS:
        raise ConfigError(f"--transport must be one of {', '.join(TRANSPORTS)}")
    if settings.websocket_control not in CONTROL_FORMATS:
        raise ConfigError(f"--websocket-control must be one of {', '.join(CONTROL_FORMATS)}")
    audiosocket = parse_listen(settings.audiosocket_listen, "--audiosocket-listen")
    websocket = parse_listen(settings.websocket_listen, "--websocket-listen")
    if settings.transport == "rtp" and settings.format == "slin":
        raise ConfigError(
            "--format slin is for audiosocket and websocket; RTP carries ulaw, alaw or slin16"
        )
    if settings.transport == "audiosocket" and audiosocket is None:
        raise ConfigError("--transport audiosocket needs --audiosocket-listen")
    if settings.dialect not in DIALECTS:
        raise ConfigError(f"--dialect must be one of {', '.join(DIALECTS)}")
    if settings.fallback not in FALLBACKS:
        raise ConfigError(f"--fallback must be one of {', '.join(FALLBACKS)}")
    if settings.fallback == "continue" and not settings.fallback_context:
        raise ConfigError("--fallback continue needs --fallback-context")
    if settings.playout_reserve_ms >= settings.max_queue_ms:
        raise ConfigError("--playout-reserve-ms must be smaller than --max-queue-ms")
    if settings.bot_ca_file and not os.path.isfile(settings.bot_ca_file):
        raise ConfigError(f"--bot-ca-file {settings.bot_ca_file} is not a readable file")
    if settings.log_format not in ("json", "console"):
        raise ConfigError("--log-format must be json or console")
    if settings.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    if urlsplit(settings.ari_url).scheme not in ("http", "https"):
        raise ConfigError("--ari-url must start with http:// or https://")
    if urlsplit(settings.bot_url).scheme not in ("ws", "wss"):
        raise ConfigError("--bot-url must start with ws:// or wss://")
    if not settings.ari_password and audiosocket is None and websocket is None:
        raise ConfigError(
            "no ARI password and no dialplan listener: give --ari-password-file or "
            "$BRIDGE_ARI_PASSWORD, or --audiosocket-listen / --websocket-listen"
        )
    return settings


_INSTANCE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,15}")


def parse_workers(text: str) -> int:
    """--workers: a positive number, or `auto` = the CPUs this process may run on."""
    if text.strip().lower() == "auto":
        return len(os.sched_getaffinity(0))
    try:
        workers = int(text)
    except ValueError:
        raise ConfigError(f"--workers must be a number or auto, got {text!r}") from None
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    return workers


def _reconnect_settings(raw: dict[str, str]) -> dict[str, object]:
    """--bot-reconnect-window (>= 0 seconds), --bot-reconnect-max (>= 0), --bot-reconnect-hold."""
    defaults = Settings()
    try:
        window = float(raw.get("bot_reconnect_window", defaults.bot_reconnect_window))
        most = int(raw.get("bot_reconnect_max", defaults.bot_reconnect_max))
    except ValueError as exc:
        raise ConfigError(f"bad number: {exc}") from None
    hold = raw.get("bot_reconnect_hold", defaults.bot_reconnect_hold)
    try:
        ReconnectPolicy(window, most, hold)
    except ValueError as exc:
        raise ConfigError(f"--bot-{str(exc).replace(' ', '-', 1)}") from None
    return {"bot_reconnect_window": window, "bot_reconnect_max": most, "bot_reconnect_hold": hold}


def _peer_grace(text: str) -> float:
    try:
        grace = float(text)
    except ValueError:
        raise ConfigError(f"--peer-grace must be seconds (0: off), got {text!r}") from None
    if not (math.isfinite(grace) and grace >= 0):
        raise ConfigError("--peer-grace must be 0 (off) or a positive number of seconds")
    return grace


def _check_peers(s: Settings) -> None:
    """What a heartbeat must be able to say (bridge.service.peers.Heartbeat)."""
    if not s.peer_grace:
        return
    if s.peer_grace <= s.heartbeat_interval:
        raise ConfigError(
            f"--peer-grace {s.peer_grace:g} must be longer than --heartbeat-interval "
            f"{s.heartbeat_interval:g}: a live peer would look dead between two heartbeats"
        )
    for flag, value in (("--app", s.app), ("--id-prefix", s.id_prefix)):
        if not value or any(c.isspace() or c in "{}" for c in value):
            raise ConfigError(
                f"{flag} {value!r}: with --peer-grace it is named in a heartbeat, so it must "
                "be one word without braces (or give --peer-grace 0)"
            )
    if s.peer_scope:
        app, _, prefix = s.peer_scope.partition(" ")
        try:
            scope = Scope.parse(app, prefix)
        except ValueError as exc:
            raise ConfigError(f"--peer-scope {s.peer_scope!r}: {exc}") from None
        if not (scope.owns_app(s.app) and scope.created(s.id_prefix)):
            raise ConfigError(
                f"--peer-scope {s.peer_scope!r} does not cover --app {s.app!r} and "
                f"--id-prefix {s.id_prefix!r}"
            )


def _check_transfer_and_record(s: Settings) -> None:
    try:
        TransferPolicy(s.transfer_allow, s.transfer_ringback, s.transfer_attended_ringback)
    except ValueError as exc:
        raise ConfigError(f"--transfer-{exc}") from None
    if s.record not in RECORD_MODES:
        raise ConfigError(f"--record must be one of {', '.join(RECORD_MODES)}")
    if s.record_format not in RECORD_FORMATS:
        raise ConfigError(f"--record-format must be one of {', '.join(RECORD_FORMATS)}")
    if s.record_on_transfer not in ("keep", "stop"):
        raise ConfigError("--record-on-transfer must be keep or stop")
    try:
        render_record_name(s.record_name, call_id="0" * 32, channel_id="1.2", at=0.0)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _bool(text: str, field: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"${_env_name(field)} must be one of {', '.join(_TRUE + _FALSE)}")


def parse_settings(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Settings:
    namespace = build_parser().parse_args(argv)
    return settings_from(namespace, os.environ if env is None else env)
