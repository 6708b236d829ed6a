"""The pure half of `pipecat-bridge check`: the facts `check.gather()` collects (frozen
dataclasses), one small function per check over them, and `evaluate()` that runs them all,
`Facts` in, `Result`s out, with no socket, file or clock, so each check is tested alone.

Also here: Asterisk's .conf format as far as the checks read it (rtp.conf's rtpstart-rtpend
the way res_rtp_asterisk clamps them, http.conf's [general], ari.conf's user sections), the
version floors of the features the bridge uses per Asterisk branch, and the output: one
`OK`/`WARN`/`FAIL` line per `Result` and the summary with the exit code.

Never a secret: URLs are shown without userinfo or query, header values and passwords are
never printed (ari.conf is read only for its section names).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

from ari.rest import normalize_base_url
from bridge.bot.connection import safe_url
from bridge.service.config import Settings

# missing from a table (21 for JSON control) never got the feature.
FLOORS: Mapping[str, Mapping[int, int]] = {
    "chan_websocket": {20: 16, 21: 11, 22: 6, 23: 0},
    "JSON control": {20: 18, 22: 8, 23: 2},
    "AudioSocket 16 kHz": {20: 17, 22: 7, 23: 1},
    "StasisBroadcast": {20: 20, 22: 10, 23: 4},
}
ARI_MODULES = (
    "res_ari", "res_ari_applications", "res_ari_asterisk", "res_ari_bridges",
    "res_ari_channels", "res_ari_events", "res_stasis", "res_stasis_answer",
    "res_http_websocket",
)  # fmt: skip
TRANSPORT_MODULES: Mapping[str, tuple[str, ...]] = {
    "rtp": ("chan_rtp", "res_rtp_asterisk"),
    "audiosocket": ("res_audiosocket", "chan_audiosocket"),
    "websocket": ("chan_websocket",),
}
# What the dialplan forms of each listener need: AudioSocket() / Dial(AudioSocket/...),
# Dial(WebSocket/...) with its websocket_client.conf entry.
LISTENER_MODULES: Mapping[str, tuple[str, ...]] = {
    "--audiosocket-listen": ("res_audiosocket", "chan_audiosocket", "app_audiosocket"),
    "--websocket-listen": ("chan_websocket", "res_websocket_client"),
}
RTP_DEFAULT = (5000, 31000)  # res_rtp_asterisk.c DEFAULT_RTP_START / DEFAULT_RTP_END


class Status(Enum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Result:
    status: Status
    what: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.status.value:<6}{self.what}" + (f": {self.fix}" if self.fix else "")


def ok(what: str) -> Result:
    return Result(Status.OK, what)


def warn(what: str, fix: str) -> Result:
    return Result(Status.WARN, what, fix)


def fail(what: str, fix: str) -> Result:
    return Result(Status.FAIL, what, fix)


# ---- facts --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfFile:
    path: str
    text: str | None = None
    error: str = ""  # strerror when it could not be read
    missing: bool = False  # it does not exist (Asterisk then uses its defaults)


@dataclass(frozen=True, slots=True)
class AriFacts:
    failure: str = ""  # "" reached; "refused", "timeout", "unreachable", "http"
    detail: str = ""  # what went wrong, without secrets
    status: int = 0  # the HTTP status of a refused /asterisk/info
    version: str = ""
    modules: Mapping[str, str] | None = None  # module name without .so -> "Running" / ...
    applications: tuple[str, ...] | None = None
    etc_dir: str = ""  # ASTETCDIR


@dataclass(frozen=True, slots=True)
class Listener:
    flag: str
    host: str
    port: int
    bind_error: str = ""


@dataclass(frozen=True, slots=True)
class BotProbe:
    label: str
    url: str  # safe_url: no userinfo, no query
    error: str = ""
    status: int = 0  # an HTTP answer instead of a WebSocket upgrade


@dataclass(frozen=True, slots=True)
class Facts:
    ari: AriFacts | None  # None: no ARI password, dialplan calls only
    asterisk_local: bool  # --ari-url's host is an address of this machine
    etc_dir: str = ""
    etc_from: str = ""  # "ASTETCDIR", "--asterisk-etc" or "" (a guess, or unknown)
    rtp_conf: ConfFile | None = None
    http_conf: ConfFile | None = None
    ari_users: frozenset[str] | None = None  # ari.conf sections with type = user
    rtp_host_error: str = ""
    listeners: tuple[Listener, ...] = ()
    bots: tuple[BotProbe, ...] = ()


# ---- pure helpers -------------------------------------------------------------------------


def parse_version(text: str) -> tuple[int, int] | None:
    """(major, minor) of '23.4.1', '20.16.0-rc1', 'certified/20.7-cert5'; None for 'GIT-…'."""
    found = re.match(r"(?:certified[/-])?(\d+)\.(\d+)", text.strip())
    return (int(found[1]), int(found[2])) if found else None


def has_feature(feature: str, version: tuple[int, int]) -> bool:
    floors = FLOORS[feature]
    major, minor = version
    if major in floors:
        return minor >= floors[major]
    return major > max(floors)


def floors_text(feature: str) -> str:
    return " / ".join(f"{major}.{minor}" for major, minor in FLOORS[feature].items() if major != 21)


def parse_conf(text: str) -> dict[str, dict[str, str]]:
    """Asterisk's .conf format, as far as these checks need: [section] (templates' `(!)` and
    `(tpl)` ignored), key = value and key => value, ';' comments; #include not followed."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = re.sub(r"(?<!\\);.*", "", raw).strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and "]" in line:
            current = sections.setdefault(line[1 : line.index("]")].strip(), {})
        elif current is not None and "=" in line:
            key, _, value = line.partition("=")
            current[key.strip().lower()] = value.removeprefix(">").strip()
    return sections


def rtp_conf_range(conf: ConfFile) -> tuple[int, int]:
    """rtpstart-rtpend the way res_rtp_asterisk reads them: clamped to 1024-65535, the
    defaults when missing or when start >= end."""
    general = parse_conf(conf.text or "").get("general", {})
    start, end = (_port(general.get(key), default) for key, default in
                  zip(("rtpstart", "rtpend"), RTP_DEFAULT, strict=True))  # fmt: skip
    return (start, end) if start < end else RTP_DEFAULT


def _port(value: str | None, default: int) -> int:
    """atoi(), clamped to MINIMUM_RTP_PORT-MAXIMUM_RTP_PORT as res_rtp_asterisk does."""
    if value is None:
        return default
    digits = re.match(r"\s*[-+]?\d+", value)
    return min(max(int(digits[0]) if digits else 0, 1024), 65535)


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host == ""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("yes", "true", "y", "t", "1", "on")


def ari_conf_users(conf: ConfFile) -> frozenset[str] | None:
    if conf.text is None:
        return None
    sections = parse_conf(conf.text)
    return frozenset(name for name, keys in sections.items() if keys.get("type") == "user")


# ---- the checks (pure) ----------------------------------------------------------------------


def check_ari(s: Settings, ari: AriFacts, facts: Facts) -> list[Result]:
    where = safe_url(normalize_base_url(s.ari_url))
    if not ari.failure:
        return [ok(f"ARI at {where} as user {s.ari_user!r}")]
    parts = urlsplit(s.ari_url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    if ari.failure == "http" and ari.status == 401:
        return [fail(f"ARI at {where} refused user {s.ari_user!r} (401)", _ari_conf_fix(s, facts))]
    if ari.failure == "http" and ari.status == 404:
        return [fail(f"ARI at {where}: 404 on /ari/asterisk/info",
                     "res_ari is not loaded or --ari-url is another HTTP server: "
                     "load it in modules.conf (load = res_ari.so)")]  # fmt: skip
    if ari.failure == "http":
        return [fail(f"ARI at {where} answered {ari.status}", ari.detail)]
    said = {"refused": "connection refused", "timeout": "no answer"}.get(ari.failure, ari.detail)
    return [fail(f"ARI at {where}: {said}", _http_conf_fix(facts.http_conf, host, port))]


def _http_conf_fix(conf: ConfFile | None, host: str, port: int) -> str:
    generic = (f"is Asterisk running? http.conf [general] needs enabled = yes, and bindaddr "
               f"and bindport matching --ari-url ({host}, {port})")  # fmt: skip
    if conf is None or conf.text is None:
        return generic
    general = parse_conf(conf.text).get("general", {})
    if not _truthy(general.get("enabled")):
        return f"{conf.path} [general] lacks enabled = yes: set it, then `module reload http`"
    bindport = general.get("bindport", "8088")
    if bindport != str(port):
        return (
            f"{conf.path} [general] bindport = {bindport}, --ari-url says {port}: make them agree"
        )
    bindaddr = general.get("bindaddr", "")
    if bindaddr and not is_wildcard(bindaddr) and bindaddr != host:
        return (
            f"{conf.path} [general] bindaddr = {bindaddr}, --ari-url says {host}: make them agree"
        )
    return generic


def _ari_conf_fix(s: Settings, facts: Facts) -> str:
    if facts.ari_users is not None and s.ari_user not in facts.ari_users:
        return (f"ari.conf has no [{s.ari_user}] section with type = user: add one, or fix "
                f"--ari-user")  # fmt: skip
    return f"ari.conf [{s.ari_user}] password does not match --ari-password(-file)"


def check_version(s: Settings, text: str) -> list[Result]:
    version = parse_version(text)
    if version is None:
        return [warn(f"Asterisk {text!r}", "cannot tell its version: the feature checks are "
                     "skipped (chan_websocket needs 20.16 / 22.6 / 23.0)")]  # fmt: skip
    have = [name for name in FLOORS if has_feature(name, version)]
    results = [ok(f"Asterisk {text} ({', '.join(have) or 'none of: ' + ', '.join(FLOORS)})")]
    if version[0] < 20 or version[0] == 21:
        results.append(warn(f"Asterisk {text} is end of life", "upgrade to 20, 22 or 23"))
    websocket = has_feature("chan_websocket", version)
    if s.transport == "websocket" and not websocket:
        results.append(fail(f"--transport websocket on Asterisk {text}",
                            f"chan_websocket came in {floors_text('chan_websocket')} (21.11): "
                            "upgrade Asterisk, or use --transport rtp or audiosocket"))  # fmt: skip
    elif (s.transport == "websocket" and s.websocket_control == "json"
          and not has_feature("JSON control", version)):  # fmt: skip
        results.append(warn(f"--websocket-control json on Asterisk {text}",
                            f"JSON control came in {floors_text('JSON control')}: "
                            "use --websocket-control plain"))  # fmt: skip
    if s.websocket_listen and not websocket:
        results.append(
            warn(
                f"--websocket-listen on Asterisk {text}",
                "Dial(WebSocket/...) needs chan_websocket "
                f"({floors_text('chan_websocket')}): set --websocket-listen ''",
            )
        )
    uses_audiosocket = s.transport == "audiosocket" or bool(s.audiosocket_listen)
    if uses_audiosocket and s.format == "slin16" and not has_feature("AudioSocket 16 kHz", version):
        results.append(warn(f"--format slin16 over AudioSocket on Asterisk {text}",
                            f"16 kHz AudioSocket came in {floors_text('AudioSocket 16 kHz')}: "
                            "use --format slin"))  # fmt: skip
    return results


def required_modules(s: Settings) -> tuple[dict[str, str], dict[str, str]]:
    """(module -> why, failing when missing), (module -> why, warning when missing)."""
    needed = {name: "ARI" for name in ARI_MODULES}
    needed.update({name: f"--transport {s.transport}" for name in TRANSPORT_MODULES[s.transport]})
    wanted: dict[str, str] = {}
    for flag, setting in (("--audiosocket-listen", s.audiosocket_listen),
                          ("--websocket-listen", s.websocket_listen)):  # fmt: skip
        if setting:
            wanted.update({m: flag for m in LISTENER_MODULES[flag] if m not in needed})
    if s.fallback_sound:
        wanted["res_stasis_playback"] = "--fallback-sound"
    if "ring" in (s.transfer_ringback, s.transfer_attended_ringback):
        wanted["res_stasis_playback"] = "transfer ring-back"
    # A bot may ask to record even with --record none.
    wanted["res_stasis_recording"] = "recording"
    wanted["res_stasis_snoop"] = "recording tracks"
    return needed, wanted


def check_transfer(s: Settings) -> Result:
    if s.transfer_allow == ("*",):
        return warn("--transfer-allow is * : a bot may transfer the caller to any target",
                    "list the targets bots may dial, e.g. --transfer-allow 'PJSIP/1*,"
                    "Local/*@agents' (an LLM-driven bot must not reach your trunks)")  # fmt: skip
    return ok(f"transfer targets limited to {', '.join(s.transfer_allow)}")


def check_peers(s: Settings) -> Result:
    """--peer-grace against --heartbeat-interval: a heartbeat late by one REST timeout or
    two must not make a live peer look dead."""
    if not s.peer_grace:
        return ok("peers off (--peer-grace 0): this bridge neither heartbeats nor sweeps")
    what = (f"--peer-grace {s.peer_grace:g} s with a heartbeat every "
            f"{s.heartbeat_interval:g} s")  # fmt: skip
    if s.peer_grace < 3 * s.heartbeat_interval:
        return warn(what, f"a peer missing two heartbeats is swept as dead: give --peer-grace "
                          f"{3 * s.heartbeat_interval:g} or more")  # fmt: skip
    return ok(f"{what} (every host's clock needs NTP)")


def check_modules(s: Settings, modules: Mapping[str, str]) -> list[Result]:
    needed, wanted = required_modules(s)
    results: list[Result] = []
    for group, make in ((needed, fail), (wanted, warn)):
        for name, why in group.items():
            status = modules.get(name)
            if status is None:
                results.append(make(f"module {name} ({why}) is not loaded",
                                    f"load it in modules.conf (load = {name}.so)"))  # fmt: skip
            elif status != "Running":
                results.append(
                    make(
                        f"module {name} ({why}) is {status}",
                        f"see Asterisk's log for why, then `module load {name}.so`",
                    )
                )
    if not results:
        results.append(ok(f"modules loaded: {', '.join((*needed, *wanted))}"))
    return results


def check_app(s: Settings, applications: Sequence[str]) -> Result:
    if s.app in applications:
        return warn(f"Stasis app {s.app!r} is already registered",
                    "a pipecat-bridge holds it (this one, running?) or held it lately (Asterisk "
                    "lists a closed app until another registers); a second process with the "
                    "same --app takes its calls away")  # fmt: skip
    return ok(f"Stasis app {s.app!r} is free")


def check_rtp_ports(s: Settings, facts: Facts) -> Result:
    low, high = s.rtp_ports
    ours = f"--rtp-ports {low}-{high}"
    if not facts.asterisk_local:
        return ok(f"{ours}: Asterisk is on another host, its rtp.conf range is not ours to clash")
    conf = facts.rtp_conf
    if conf is None:
        return warn(f"{ours} against rtp.conf", "Asterisk's config directory is unknown: "
                    "give --asterisk-etc DIR (where rtp.conf is)")  # fmt: skip
    if conf.text is None and not conf.missing:
        return warn(f"{ours} against {conf.path}", f"cannot read it ({conf.error}): keep "
                    "--rtp-ports outside its rtpstart-rtpend by hand")  # fmt: skip
    start, end = rtp_conf_range(conf)
    theirs = (f"{conf.path} does not exist, so Asterisk's default {start}-{end}" if conf.missing
              else f"{conf.path} rtpstart-rtpend {start}-{end}")  # fmt: skip
    if low <= end and start <= high:
        return fail(
            f"{ours} overlaps {theirs}",
            "move --rtp-ports outside it, or rtpstart/rtpend in rtp.conf",
        )
    return ok(f"{ours} clear of {theirs}")


def check_rtp_host(s: Settings, facts: Facts) -> Result:
    host = s.rtp_host
    if is_wildcard(host):
        if facts.asterisk_local:
            return warn(
                f"--rtp-host {host} listens on every interface",
                "give the address Asterisk sends from (127.0.0.1 on this machine)",
            )
        return fail(f"--rtp-host {host} goes to Asterisk as external_host",
                    f"Asterisk at {s.ari_host} would send the audio to itself: give this "
                    "machine's address facing it")  # fmt: skip
    if facts.rtp_host_error:
        return fail(
            f"--rtp-host {host} is not an address of this machine ({facts.rtp_host_error})",
            "give this machine's address facing Asterisk",
        )
    if is_loopback(host) and not facts.asterisk_local:
        return fail(
            f"--rtp-host {host} is loopback",
            f"Asterisk at {s.ari_host} cannot reach it: give this machine's address facing it",
        )
    return ok(f"--rtp-host {host} is a local address Asterisk can reach")


def check_listener(s: Settings, listener: Listener, facts: Facts) -> list[Result]:
    where = f"{listener.flag} {listener.host}:{listener.port}"
    if listener.bind_error:
        in_use = "in use" in listener.bind_error.lower()
        hint = ("a pipecat-bridge already running? stop it, or pick another port" if in_use
                else "give an address of this machine")  # fmt: skip
        return [fail(f"{where} cannot be bound ({listener.bind_error})", hint)]
    if is_loopback(listener.host):
        if facts.asterisk_local:
            return [ok(f"{where} is free, loopback only")]
        needs_it = s.transport == "audiosocket" and listener.flag == "--audiosocket-listen"
        make = fail if needs_it else warn
        return [make(f"{where} is loopback", f"Asterisk at {s.ari_host} cannot connect to it: "
                     "bind this machine's address facing it")]  # fmt: skip
    return [
        warn(
            f"{where} is free but open to the network",
            "anyone who can reach it can inject audio into calls: bind 127.0.0.1 when "
            "Asterisk is on this machine, else firewall the port to Asterisk's address",
        )
    ]


def check_bot(bot: BotProbe) -> Result:
    what = f"{bot.label} {bot.url}"
    if not bot.error:
        return ok(f"{what} accepts a WebSocket")
    if bot.status in (401, 403):
        hint = "the bot wants other credentials: check --bot-headers-file or the URL"
    elif bot.status:
        hint = "the handshake was refused: check the URL's path"
    elif "ssl" in bot.error.lower() or "certificate" in bot.error.lower():
        hint = "TLS failed: give the CA that signed the bot's certificate in --bot-ca-file"
    else:
        hint = "is the bot running and listening there?"
    return fail(f"{what}: {bot.error}", hint)


def evaluate(s: Settings, facts: Facts) -> list[Result]:
    results: list[Result] = []
    ari = facts.ari
    if ari is None:
        results.append(ok("ARI off (no --ari-password): only dialplan calls are served"))
    else:
        results.extend(check_ari(s, ari, facts))
        if not ari.failure:
            results.extend(check_version(s, ari.version))
            if ari.modules is not None:
                results.extend(check_modules(s, ari.modules))
            if ari.applications is not None:
                results.append(check_app(s, ari.applications))
        results.append(check_rtp_ports(s, facts))
        results.append(check_rtp_host(s, facts))
        results.append(check_transfer(s))
        results.append(check_peers(s))
    for listener in facts.listeners:
        results.extend(check_listener(s, listener, facts))
    results.extend(check_bot(bot) for bot in facts.bots)
    return results


def summary(results: Sequence[Result]) -> tuple[str, int]:
    failed = sum(r.status is Status.FAIL for r in results)
    warned = sum(r.status is Status.WARN for r in results)
    return f"{failed} failed, {warned} warning(s), {len(results)} checks", 1 if failed else 0
