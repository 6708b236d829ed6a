"""What each worker of `--workers N` is: its names, its ports, its share of the calls; pure.

A host runs one supervisor (bridge.service.supervisor) and N workers, each an ordinary
single-process bridge. A worker is a *slot* (0..N-1) in a *generation* (0 at start, +1 for a
slot at every `systemctl reload`). Everything a worker creates in Asterisk is named so that
neither another host nor another worker of this host can mistake it for its own:

    app        <app>-<instance>-<slot>            generation 0
               <app>-<instance>-<slot>g<gen>      later generations
    id prefix  <prefix><instance>-<slot>-  /  <prefix><instance>-<slot>g<gen>-

A worker restarted after a crash keeps its plan (same app, same prefix), so it sees what its
predecessor left in `GET /applications/<app>` and sweeps it. During a rolling replace the old
and the new worker of a slot run side by side, so every per-worker resource is cut into 2N
pieces and a generation takes piece `slot + N * (gen % 2)`: the RTP port range, and the
media listener ports (base port + that index; port 0, a fresh port, and '' = off, stay as they
are). The HTTP API is the host's: the supervisor binds `--http-listen` (bridge.ops.host_api)
and each worker `127.0.0.1:<port + 1 + index>`, loopback only, and says where in its
sd_notify (`X_PIPECAT_HTTP=host:port`, so port 0 works too).
`--max-calls` is for the host and is divided among the slots (a draining old worker takes no
new calls, so the overlap never exceeds it for new calls).

Peers (--peer-grace, bridge.service.peers): the host is one peer. Every worker, of either
generation, writes the host's one heartbeat (same variable, same scope `<app>-<instance>-{tag}
<prefix><instance>-{tag}-`), so it stops only when the last worker is gone: a worker crashing
and restarting under backoff (up to 30 s, longer than the grace) never makes peers sweep its
live siblings' calls. Only slot 0 looks at the peers and sweeps the dead ones, and not while
it drains: during a reload the new slot 0 takes over.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import ConfigError
from bridge.media.factory import parse_listen
from bridge.service.config import Settings
from bridge.service.peers import TAG

INSTANCE_ID_MAX = 12
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
# The sd_notify assignment in which a worker says where its HTTP API listens.
HTTP_ADDRESS = "X_PIPECAT_HTTP"
WORKER_HTTP_HOST = "127.0.0.1"


def default_instance_id(hostname: str) -> str:
    """The host's first label, lowercase, [a-z0-9-]; a long one is cut and keeps a hash of
    the whole name, so `bridge-host-01` and `bridge-host-02` stay apart."""
    label = hostname.split(".", 1)[0].lower()
    clean = re.sub(r"[^a-z0-9-]+", "-", label).strip("-") or "host"
    if len(clean) <= INSTANCE_ID_MAX:
        return clean
    digest = hashlib.sha1(hostname.lower().encode()).hexdigest()[:4]
    return f"{clean[: INSTANCE_ID_MAX - 5].rstrip('-')}-{digest}"


def worker_tag(slot: int, generation: int) -> str:
    return f"{slot}" if generation == 0 else f"{slot}g{generation}"


def piece_index(slot: int, generation: int, workers: int) -> int:
    """Which of the 2N pieces (ports, spool) a slot's generation uses."""
    return slot + workers * (generation % 2)


def rtp_slices(low: int, high: int, workers: int) -> list[tuple[int, int]]:
    """`low-high` cut into 2N even-sized ranges, each starting on an even port."""
    first = low + (low % 2)
    width = ((high - first + 1) // (2 * workers)) & ~1
    if width < 2:
        raise ConfigError(
            f"--rtp-ports {low}-{high} is too small for {workers} workers: each needs an even "
            f"port in each of {2 * workers} slices (old and new during a reload)"
        )
    return [(first + i * width, first + (i + 1) * width - 1) for i in range(2 * workers)]


def split_calls(max_calls: int, workers: int) -> list[int]:
    """The host's --max-calls per slot (0: no limit stays no limit)."""
    if max_calls == 0:
        return [0] * workers
    if max_calls < workers:
        raise ConfigError(f"--max-calls {max_calls} is fewer than --workers {workers}")
    share, extra = divmod(max_calls, workers)
    return [share + (1 if slot < extra else 0) for slot in range(workers)]


def shifted_listen(text: str, index: int, flag: str) -> str:
    """HOST:PORT moved to PORT + index; '' (off) and port 0 (any free port) unchanged."""
    address = parse_listen(text, flag)
    if address is None or address[1] == 0:
        return text
    host, port = address
    if port + index > 65535:
        raise ConfigError(f"{flag} {text}: port {port} + {index} is past 65535")
    return f"[{host}]:{port + index}" if ":" in host else f"{host}:{port + index}"


def worker_http_listen(text: str, index: int) -> str:
    """A worker's HTTP API: loopback, the host's port + 1 + index (0 stays any free port);
    '' (off) when the host has none."""
    address = parse_listen(text, "--http-listen")
    if address is None:
        return ""
    return shifted_listen(f"{WORKER_HTTP_HOST}:{address[1]}", index + 1, "--http-listen")


def parse_http_address(text: str) -> tuple[str, int] | None:
    """A worker's `X_PIPECAT_HTTP=host:port` ([v6]:port too), or None."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def backoff_delay(attempt: int, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S) -> float:
    """Seconds before restart `attempt` (1, 2, ...) of a worker that died: 1, 2, 4, ... cap."""
    return min(cap, base * 2 ** max(0, attempt - 1))


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    slot: int
    generation: int
    app: str
    id_prefix: str
    rtp_ports: tuple[int, int]
    max_calls: int
    audiosocket_listen: str
    websocket_listen: str
    http_listen: str
    webhook_spool: str  # "" = the worker's default
    instance: str = ""
    peer_scope: str = ""  # the host's scope: every worker heartbeats for the whole host

    @property
    def tag(self) -> str:
        return worker_tag(self.slot, self.generation)

    def flags(self) -> list[str]:
        """The worker's command-line overrides (appended: they win over the supervisor's)."""
        flags = [
            "--workers", "1",
            "--app", self.app,
            "--id-prefix", self.id_prefix,
            "--rtp-ports", f"{self.rtp_ports[0]}-{self.rtp_ports[1]}",
            "--max-calls", str(self.max_calls),
            "--audiosocket-listen", self.audiosocket_listen,
            "--websocket-listen", self.websocket_listen,
            "--http-listen", self.http_listen,
        ]  # fmt: skip
        if self.webhook_spool:
            flags += ["--webhook-spool", self.webhook_spool]
        if self.instance:
            flags += ["--instance-id", self.instance]
        if self.peer_scope:
            flags += ["--peer-scope", self.peer_scope]
        if self.slot != 0:
            flags.append("--no-peer-sweep")  # slot 0 sweeps the dead peers for the host
        return flags


# The media listeners move by 2 ports a slice, so the default neighbours (AudioSocket 9092,
# chan_websocket 9093) interleave instead of colliding: 9092/9093, 9094/9095, ...
LISTENER_STRIDE = 2


def check_listener_slices(settings: Settings) -> None:
    """ConfigError if the workers' listener ports (both generations') would collide."""
    pieces = 2 * settings.workers
    taken: dict[int, str] = {}
    rows = [("--audiosocket-listen", settings.audiosocket_listen, LISTENER_STRIDE, 0),
            ("--websocket-listen", settings.websocket_listen, LISTENER_STRIDE, 0),
            ("--http-listen", settings.http_listen, 1, 1)]  # fmt: skip
    for flag, text, stride, first in rows:
        address = parse_listen(text, flag)
        if address is None or address[1] == 0:
            continue
        ports = [address[1]] if flag == "--http-listen" else []
        ports += [address[1] + first + stride * i for i in range(pieces)]
        for port in ports:
            if port in taken and taken[port] != flag:
                raise ConfigError(
                    f"with --workers {settings.workers}, {flag} and {taken[port]} both need "
                    f"port {port}: move one of them (each takes {pieces} ports from its own)"
                )
            taken[port] = flag


def plan_worker(
    settings: Settings, instance: str, slot: int, generation: int, spool_base: str = ""
) -> WorkerPlan:
    """Slot `slot` of generation `generation` (ConfigError if the settings cannot be cut)."""
    workers = settings.workers
    check_listener_slices(settings)
    index = piece_index(slot, generation, workers)
    tag = worker_tag(slot, generation)
    spool = ""
    if spool_base:
        base = Path(spool_base)
        spool = str(base.with_name(f"{base.stem}-{index}{base.suffix}"))
    return WorkerPlan(
        slot=slot,
        generation=generation,
        app=f"{settings.app}-{instance}-{tag}",
        id_prefix=f"{settings.id_prefix}{instance}-{tag}-",
        rtp_ports=rtp_slices(*settings.rtp_ports, workers)[index],
        max_calls=split_calls(settings.max_calls, workers)[slot],
        audiosocket_listen=shifted_listen(
            settings.audiosocket_listen, LISTENER_STRIDE * index, "--audiosocket-listen"
        ),
        websocket_listen=shifted_listen(
            settings.websocket_listen, LISTENER_STRIDE * index, "--websocket-listen"
        ),
        http_listen=worker_http_listen(settings.http_listen, index),
        webhook_spool=spool,
        instance=instance,
        peer_scope=f"{settings.app}-{instance}-{TAG} {settings.id_prefix}{instance}-{TAG}-",
    )


def calls_in_status(status: str) -> int | None:
    """The calls a worker reports in its STATUS= ('[draining: ]N calls active')."""
    found = re.search(r"(\d+) calls active", status)
    return int(found.group(1)) if found else None


def parse_notify(datagram: bytes) -> dict[str, str]:
    """An sd_notify datagram: newline-separated KEY=value; anything else is skipped."""
    fields: dict[str, str] = {}
    for line in datagram.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields
