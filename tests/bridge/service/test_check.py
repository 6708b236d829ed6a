"""`pipecat-bridge check`: each check as a pure function over facts, then the whole command
against the simulated Asterisk (real HTTP on 127.0.0.1) misconfigured one way at a time."""

from __future__ import annotations

import dataclasses
import io
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from bridge.service import check_rules as chk
from bridge.service.check import run_check
from bridge.service.check_rules import (
    AriFacts,
    BotProbe,
    ConfFile,
    Facts,
    Listener,
    Result,
    Status,
    evaluate,
)
from bridge.service.cli import main
from bridge.service.config import _FLAGS, Settings, build_parser, parse_settings
from bridge.tools.sim.asterisk import SimulatedAsterisk

LOCAL = Facts(ari=AriFacts(version="23.4.1"), asterisk_local=True)
ARI_PASSWORD = "pw-ari-9"
RTP_CONF = "[general]\nrtpstart = 10000 ; the lab's\nrtpend = 10999\n"


def statuses(results: list[Result]) -> list[tuple[str, str]]:
    return [(r.status.value, r.line()) for r in results]


def assert_one(results: list[Result], status: Status, *words: str) -> Result:
    found = [r for r in results if r.status is status and all(w in r.line() for w in words)]
    assert len(found) == 1, statuses(results)
    return found[0]


# ---- pure: versions, config files -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "version"),
    [("23.4.1", (23, 4)), ("20.16.0-rc1", (20, 16)), ("certified/20.7-cert5", (20, 7)),
     ("GIT-master-abc123", None), ("", None)],
)  # fmt: skip
def test_parse_version(text: str, version: tuple[int, int] | None) -> None:
    assert chk.parse_version(text) == version


@pytest.mark.parametrize(
    ("feature", "has", "lacks"),
    [
        ("chan_websocket", [(20, 16), (21, 11), (22, 6), (23, 0), (24, 0)],
         [(20, 15), (21, 10), (22, 5), (18, 9)]),
        ("JSON control", [(20, 18), (22, 8), (23, 2)], [(20, 17), (21, 99), (22, 7), (23, 1)]),
        ("AudioSocket 16 kHz", [(20, 17), (22, 7), (23, 1)], [(20, 16), (22, 6), (23, 0)]),
        ("StasisBroadcast", [(20, 20), (22, 10), (23, 4)], [(20, 19), (22, 9), (23, 3)]),
    ],
)  # fmt: skip
def test_version_floors(
    feature: str, has: list[tuple[int, int]], lacks: list[tuple[int, int]]
) -> None:
    assert all(chk.has_feature(feature, v) for v in has)
    assert not any(chk.has_feature(feature, v) for v in lacks)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (RTP_CONF, (10000, 10999)),
        ("[general]\nrtpstart => 12000\n", (12000, 31000)),
        ("[general]\n;rtpstart = 12000\n", (5000, 31000)),
        ("[general]\nrtpstart = 80\nrtpend = 99999\n", (1024, 65535)),
        ("[general]\nrtpstart = 20000\nrtpend = 10000\n", (5000, 31000)),  # "Unreasonable"
        ("[other]\nrtpstart = 12000\n", (5000, 31000)),
    ],
)
def test_rtp_conf_range_as_res_rtp_asterisk_reads_it(text: str, expected: tuple[int, int]) -> None:
    assert chk.rtp_conf_range(ConfFile("rtp.conf", text)) == expected


def test_parse_conf_sections_templates_comments() -> None:
    conf = chk.parse_conf("[bridge](!)\ntype = user ; note\npass\\;word = a\\;b\n#include x\n")
    assert conf == {"bridge": {"type": "user", "pass\\;word": "a\\;b"}}


def test_result_lines() -> None:
    assert chk.ok("x").line() == "OK    x"
    assert chk.fail("x", "do y").line() == "FAIL  x: do y"
    assert chk.warn("x", "do y").line() == "WARN  x: do y"


# ---- pure: each check ---------------------------------------------------------------------


def test_version_websocket_transport_fails_below_its_floor() -> None:
    s = Settings(transport="websocket")
    assert_one(chk.check_version(s, "20.15.0"), Status.FAIL, "--transport websocket", "20.16")
    assert_one(chk.check_version(s, "21.10.0"), Status.WARN, "end of life")
    assert all(r.status is Status.OK for r in chk.check_version(s, "22.6.0"))


def test_version_json_control_is_a_warning() -> None:
    s = Settings(transport="websocket", websocket_control="json")
    assert_one(chk.check_version(s, "23.1.0"), Status.WARN, "--websocket-control json", "23.2")
    assert all(r.status is Status.OK for r in chk.check_version(s, "23.2.0"))


def test_version_audiosocket_16k_and_an_unknown_version() -> None:
    s = Settings(transport="audiosocket", format="slin16")
    assert_one(chk.check_version(s, "23.0.0"), Status.WARN, "AudioSocket", "--format slin")
    assert_one(chk.check_version(s, "GIT-master-1"), Status.WARN, "cannot tell")


def test_modules_missing_fails_in_modules_conf_words() -> None:
    modules = {name: "Running" for name in (*chk.ARI_MODULES, "chan_rtp", "res_rtp_asterisk")}
    s = Settings(transport="websocket", audiosocket_listen="", websocket_listen="")
    result = assert_one(chk.check_modules(s, modules), Status.FAIL, "chan_websocket")
    assert result.fix == "load it in modules.conf (load = chan_websocket.so)"
    modules["chan_websocket"] = "Not Running"
    assert_one(chk.check_modules(s, modules), Status.FAIL, "chan_websocket", "Not Running")


def test_modules_a_listener_needs_are_warnings() -> None:
    modules = {name: "Running" for name in (*chk.ARI_MODULES, "chan_rtp", "res_rtp_asterisk")}
    results = chk.check_modules(Settings(websocket_listen=""), modules)
    assert {r.status for r in results} == {Status.WARN}
    assert_one(results, Status.WARN, "app_audiosocket", "load = app_audiosocket.so")


def test_app_registered_is_a_warning() -> None:
    assert chk.check_app(Settings(), ["pipecat"]).status is Status.WARN
    assert chk.check_app(Settings(app="other"), ["pipecat"]).status is Status.OK


@pytest.mark.parametrize(
    ("conf", "status", "words"),
    [
        (ConfFile("/e/rtp.conf", RTP_CONF), Status.OK, ("clear of", "10000-10999")),
        (ConfFile("/e/rtp.conf", None, "No such file", missing=True), Status.FAIL,
         ("does not exist", "default 5000-31000")),
        (ConfFile("/e/rtp.conf", None, "Permission denied"), Status.WARN, ("Permission denied",)),
    ],
)  # fmt: skip
def test_rtp_ports_against_rtp_conf(conf: ConfFile, status: Status, words: tuple[str, ...]) -> None:
    result = chk.check_rtp_ports(Settings(), dataclasses.replace(LOCAL, rtp_conf=conf))
    assert result.status is status and all(w in result.line() for w in words), result.line()


def test_rtp_ports_overlap_names_both_ranges() -> None:
    facts = dataclasses.replace(LOCAL, rtp_conf=ConfFile("/e/rtp.conf", RTP_CONF))
    line = chk.check_rtp_ports(Settings(rtp_ports=(10990, 11990)), facts).line()
    assert line.startswith("FAIL  --rtp-ports 10990-11990 overlaps /e/rtp.conf rtpstart-rtpend "
                           "10000-10999")  # fmt: skip
    assert chk.check_rtp_ports(Settings(), LOCAL).status is Status.WARN  # no config directory
    remote = dataclasses.replace(facts, asterisk_local=False)
    assert chk.check_rtp_ports(Settings(rtp_ports=(10990, 11990)), remote).status is Status.OK


def test_rtp_host() -> None:
    remote = dataclasses.replace(LOCAL, asterisk_local=False)
    assert chk.check_rtp_host(Settings(rtp_host="0.0.0.0"), LOCAL).status is Status.WARN
    assert chk.check_rtp_host(Settings(rtp_host="0.0.0.0"), remote).status is Status.FAIL
    assert chk.check_rtp_host(Settings(rtp_host="127.0.0.1"), remote).status is Status.FAIL
    not_here = dataclasses.replace(LOCAL, rtp_host_error="Cannot assign requested address")
    line = chk.check_rtp_host(Settings(rtp_host="192.0.2.7"), not_here).line()
    assert line.startswith("FAIL  --rtp-host 192.0.2.7 is not an address of this machine")
    assert chk.check_rtp_host(Settings(), LOCAL).status is Status.OK


def test_listeners() -> None:
    s = Settings()
    busy = Listener("--audiosocket-listen", "127.0.0.1", 9092, "Address already in use")
    assert_one(chk.check_listener(s, busy, LOCAL), Status.FAIL, "in use", "already running")
    open_ = Listener("--websocket-listen", "0.0.0.0", 9093)
    assert_one(chk.check_listener(s, open_, LOCAL), Status.WARN, "inject audio")
    loop = Listener("--audiosocket-listen", "127.0.0.1", 9092)
    remote = dataclasses.replace(LOCAL, asterisk_local=False)
    audiosocket = Settings(transport="audiosocket")
    assert_one(chk.check_listener(audiosocket, loop, remote), Status.FAIL, "cannot connect")


def test_bot_probe_results() -> None:
    assert chk.check_bot(BotProbe("bot", "ws://b/ws")).status is Status.OK
    result = chk.check_bot(BotProbe("bot", "ws://b/ws", "handshake answered HTTP 401", 401))
    assert result.status is Status.FAIL and "--bot-headers-file" in result.fix


@pytest.mark.parametrize(
    ("http_conf", "words"),
    [
        ("[general]\nenabled = no\n", ("enabled = yes",)),
        ("[general]\nenabled = yes\nbindport = 8089\n", ("bindport = 8089", "says 8088")),
        ("[general]\nenabled=yes\nbindaddr=10.1.1.1\n", ("bindaddr = 10.1.1.1", "127.0.0.1")),
        ("[general]\nenabled = yes\nbindaddr = 0.0.0.0\n", ("is Asterisk running?",)),
    ],
)
def test_unreachable_ari_in_http_conf_words(http_conf: str, words: tuple[str, ...]) -> None:
    facts = Facts(ari=AriFacts("refused"), asterisk_local=True,
                  http_conf=ConfFile("/e/http.conf", http_conf))  # fmt: skip
    line = chk.check_ari(Settings(), AriFacts("refused"), facts)[0].line()
    assert line.startswith("FAIL  ARI at http://127.0.0.1:8088: connection refused: ")
    assert all(w in line for w in words), line


def test_401_names_the_ari_conf_user() -> None:
    refused = AriFacts("http", "Authentication required", 401)
    no_user = Facts(ari=refused, asterisk_local=True, ari_users=frozenset({"other"}))
    assert "no [asterisk] section" in chk.check_ari(Settings(), refused, no_user)[0].fix
    facts = dataclasses.replace(no_user, ari_users=None)
    assert chk.check_ari(Settings(), refused, facts)[0].fix == (
        "ari.conf [asterisk] password does not match --ari-password(-file)"
    )


def test_ari_off_skips_the_ari_checks() -> None:
    results = evaluate(Settings(), Facts(ari=None, asterisk_local=True))
    assert statuses(results) == [("OK", "OK    ARI off (no --ari-password): only dialplan "
                                        "calls are served")]  # fmt: skip


# ---- the command against the simulated Asterisk ---------------------------------------------


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[SimulatedAsterisk]:
    (tmp_path / "rtp.conf").write_text(RTP_CONF)
    async with SimulatedAsterisk(seed=1, password=ARI_PASSWORD) as simulated:
        simulated.system.variables["ASTETCDIR"] = str(tmp_path)
        yield simulated


@pytest.fixture
async def bot() -> AsyncIterator[Server]:
    """A bot that wants `Authorization: Bearer t0ken` on /ws."""

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    def auth(ws: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Authorization") != "Bearer t0ken":
            return Response(401, "Unauthorized", Headers(), b"")
        return None

    async with serve(handler, "127.0.0.1", 0, process_request=auth) as server:
        yield server


def bot_url(server: Server) -> str:
    port = next(iter(server.sockets)).getsockname()[1]
    return f"ws://127.0.0.1:{port}/ws"


async def run(sim: SimulatedAsterisk, *flags: str, tmp_path: Path, headers: bool = True,
              password: str = ARI_PASSWORD, etc: str = "") -> tuple[int, list[str]]:  # fmt: skip
    env = {"BRIDGE_ARI_PASSWORD": password}
    if headers:
        path = tmp_path / "headers"
        path.write_text("Authorization: Bearer t0ken\n")
        path.chmod(0o600)
        env["BRIDGE_BOT_HEADERS_FILE"] = str(path)
    argv = ["check", "--ari-url", sim.base_url, "--audiosocket-listen", "127.0.0.1:0",
            "--websocket-listen", "127.0.0.1:0", "--transfer-allow", "PJSIP/1*,Local/*@agents",
            *flags]  # fmt: skip
    out = io.StringIO()
    code = await run_check(parse_settings(argv, env), etc, out)
    text = out.getvalue()
    assert "t0ken" not in text and password not in text
    return code, text.splitlines()


def only(lines: list[str], start: str) -> list[str]:
    return [line for line in lines if line.startswith(start)]


async def test_all_good_exits_0(sim: SimulatedAsterisk, bot: Server, tmp_path: Path) -> None:
    code, lines = await run(sim, "--bot-url", bot_url(bot), tmp_path=tmp_path)
    assert code == 0, lines
    assert only(lines, "FAIL") == [] and only(lines, "WARN") == []
    assert lines[0] == f"OK    ARI at {sim.base_url} as user 'asterisk'"
    assert ("OK    Asterisk 23.4.1 (chan_websocket, JSON control, AudioSocket 16 kHz, "
            "StasisBroadcast)") in lines  # fmt: skip
    assert f"OK    --rtp-ports 20000-20999 clear of {tmp_path}/rtp.conf rtpstart-rtpend " \
           "10000-10999" in lines  # fmt: skip
    assert f"OK    bot {bot_url(bot)} accepts a WebSocket" in lines
    assert "OK    transfer targets limited to PJSIP/1*, Local/*@agents" in lines
    assert lines[-1] == "0 failed, 0 warning(s), 11 checks"


async def test_any_transfer_target_is_a_warning(
    sim: SimulatedAsterisk, bot: Server, tmp_path: Path
) -> None:
    code, lines = await run(sim, "--bot-url", bot_url(bot), "--transfer-allow", "*",
                            tmp_path=tmp_path)  # fmt: skip
    assert code == 0
    (line,) = only(lines, "WARN")
    assert line.startswith("WARN  --transfer-allow is * : a bot may transfer the caller")


async def test_wrong_password_is_the_401_line(
    sim: SimulatedAsterisk, bot: Server, tmp_path: Path
) -> None:
    code, lines = await run(sim, "--bot-url", bot_url(bot), tmp_path=tmp_path, password="nope")
    assert code == 1
    assert only(lines, "FAIL") == [
        f"FAIL  ARI at {sim.base_url} refused user 'asterisk' (401): ari.conf [asterisk] "
        "password does not match --ari-password(-file)"
    ]


async def test_module_missing(sim: SimulatedAsterisk, bot: Server, tmp_path: Path) -> None:
    sim.system.unload("chan_websocket.so", "app_audiosocket")
    code, lines = await run(sim, "--transport", "websocket", "--bot-url", bot_url(bot),
                            tmp_path=tmp_path)  # fmt: skip
    assert code == 1
    assert only(lines, "FAIL") == [
        "FAIL  module chan_websocket (--transport websocket) is not loaded: load it in "
        "modules.conf (load = chan_websocket.so)"
    ]
    assert only(lines, "WARN") == [
        "WARN  module app_audiosocket (--audiosocket-listen) is not loaded: load it in "
        "modules.conf (load = app_audiosocket.so)"
    ]


async def test_older_asterisk(sim: SimulatedAsterisk, bot: Server, tmp_path: Path) -> None:
    sim.system.version = "22.5.0"
    code, lines = await run(sim, "--transport", "websocket", "--bot-url", bot_url(bot),
                            tmp_path=tmp_path)  # fmt: skip
    assert code == 1
    assert [line.split(":")[0] for line in only(lines, "FAIL")] == [
        "FAIL  --transport websocket on Asterisk 22.5.0"
    ]
    sim.system.version = "23.1.0"
    code, lines = await run(sim, "--transport", "websocket", "--websocket-control", "json",
                            "--bot-url", bot_url(bot), tmp_path=tmp_path)  # fmt: skip
    assert code == 0  # a warning only
    assert [line.split(":")[0] for line in only(lines, "WARN")] == [
        "WARN  --websocket-control json on Asterisk 23.1.0"
    ]


async def test_rtp_conf_overlap(sim: SimulatedAsterisk, bot: Server, tmp_path: Path) -> None:
    code, lines = await run(sim, "--rtp-ports", "10900-11100", "--bot-url", bot_url(bot),
                            tmp_path=tmp_path)  # fmt: skip
    assert code == 1
    assert only(lines, "FAIL") == [
        f"FAIL  --rtp-ports 10900-11100 overlaps {tmp_path}/rtp.conf rtpstart-rtpend "
        "10000-10999: move --rtp-ports outside it, or rtpstart/rtpend in rtp.conf"
    ]
    etc = tmp_path / "etc"  # --asterisk-etc wins over ASTETCDIR
    etc.mkdir()
    (etc / "rtp.conf").write_text("[general]\nrtpstart = 30000\nrtpend = 30999\n")
    code, _lines = await run(sim, "--rtp-ports", "10900-11100", "--bot-url", bot_url(bot),
                             tmp_path=tmp_path, etc=str(etc))  # fmt: skip
    assert code == 0


async def test_bot_down_and_bot_map(sim: SimulatedAsterisk, bot: Server, tmp_path: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        dead = f"ws://127.0.0.1:{free.getsockname()[1]}/ws?token=s3cr3t"
    code, lines = await run(sim, "--bot-url", dead, "--bot-map", f"sales={bot_url(bot)}",
                            tmp_path=tmp_path)  # fmt: skip
    assert code == 1
    port = dead.split(":")[2].split("/")[0]
    assert only(lines, "FAIL") == [
        f"FAIL  bot ws://127.0.0.1:{port}/ws?***: connection refused: is the bot running and "
        "listening there?"
    ]
    assert f"OK    bot 'sales' (--bot-map) {bot_url(bot)} accepts a WebSocket" in lines
    assert not any("s3cr3t" in line for line in lines)
    code, lines = await run(sim, "--bot-url", bot_url(bot), tmp_path=tmp_path, headers=False)
    assert only(lines, "FAIL")[0].endswith(
        "handshake answered HTTP 401: the bot wants other credentials: check "
        "--bot-headers-file or the URL"
    )


async def test_app_registered_and_listener_in_use(
    sim: SimulatedAsterisk, bot: Server, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with aiohttp.ClientSession() as session, session.ws_connect(sim.events_url):
            await sim.wait_app_active()
            code, lines = await run(sim, "--bot-url", bot_url(bot), "--audiosocket-listen",
                                    f"127.0.0.1:{port}", tmp_path=tmp_path)  # fmt: skip
    assert code == 1
    assert [line.split(":")[0] for line in only(lines, "WARN")] == [
        "WARN  Stasis app 'pipecat' is already registered"
    ]
    assert only(lines, "FAIL")[0].startswith(
        f"FAIL  --audiosocket-listen 127.0.0.1:{port} cannot be bound (Address already in use)"
    )


async def test_ari_not_listening_reads_http_conf(tmp_path: Path) -> None:
    (tmp_path / "http.conf").write_text("[general]\nenabled = yes\nbindport = 8089\n")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    settings = parse_settings(["check", "--ari-url", f"http://127.0.0.1:{port}",
                               "--audiosocket-listen", "", "--websocket-listen", ""],
                              {"BRIDGE_ARI_PASSWORD": "pw"})  # fmt: skip
    out = io.StringIO()
    assert await run_check(settings, str(tmp_path), out) == 1
    assert out.getvalue().splitlines()[0] == (
        f"FAIL  ARI at http://127.0.0.1:{port}: connection refused: {tmp_path}/http.conf "
        f"[general] bindport = 8089, --ari-url says {port}: make them agree"
    )


# ---- the command line -----------------------------------------------------------------------


def test_check_takes_every_run_flag_and_asterisk_etc() -> None:
    parser = build_parser()
    run_ns = parser.parse_args(["run"])
    check_ns = parser.parse_args(["check", "--asterisk-etc", "/x"])
    assert set(vars(run_ns)) | {"asterisk_etc"} == set(vars(check_ns))
    for flag, field, _ in _FLAGS:
        assert getattr(parser.parse_args(["check", flag, "v"]), field) == "v"


def test_cli_exit_codes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BRIDGE_ARI_PASSWORD", raising=False)
    assert main(["check", "--format", "bogus", "--ari-password", "x"]) == 2
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    code = main(["check", "--ari-password", "s3cret", "--ari-url", f"http://127.0.0.1:{port}",
                 "--bot-url", f"ws://127.0.0.1:{port}/", "--audiosocket-listen", "",
                 "--websocket-listen", ""])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1 and "connection refused" in out and "s3cret" not in out
