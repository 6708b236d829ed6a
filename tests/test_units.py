"""The systemd units in deploy/: they load cleanly, rate 2.0 or better in `systemd-analyze
security`, and their seccomp rules (SystemCallFilter=, MemoryDenyWriteExecute=,
RestrictAddressFamilies=) leave numpy, uvloop, sqlite and the sockets the bridge uses working.

The last is checked without systemd: `python tests/test_units.py CMD...` loads the same rules
with libseccomp, in the separate filters systemd would load, and runs CMD under them, e.g.
`.venv/bin/python tests/test_units.py .venv/bin/pytest -q` for the whole suite.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = [ROOT / "deploy" / "pipecat-bridge.service", ROOT / "deploy" / "pipecat-bridge@.service"]
EXEC_START = "/opt/pipecat-bridge/.venv/bin/pipecat-bridge"
MAX_EXPOSURE = 2.0
ANALYZE = shutil.which("systemd-analyze")

needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def analyze(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


@functools.cache
def offline_supported() -> bool:
    return ANALYZE is not None and "--offline" in analyze("--help").stdout


def unit_settings(unit: Path, key: str) -> list[str]:
    """Every value of `key=` in the unit, in order."""
    prefix = key + "="
    return [
        line[len(prefix) :].strip()
        for line in unit.read_text().splitlines()
        if line.startswith(prefix)
    ]


# ---- systemd-analyze ---------------------------------------------------------------------------


@needs_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    """`systemd-analyze verify` checks that ExecStart= exists: the copy runs this Python instead
    of /opt/pipecat-bridge's, and nothing else may be reported (unknown keys and bad values are
    warnings on stderr with exit status 0, so the output has to be empty)."""
    text = unit.read_text()
    assert unit_settings(unit, "ExecStart")[0].split()[0] == EXEC_START
    (tmp_path / unit.name).write_text(text.replace(EXEC_START, sys.executable))
    result = analyze("verify", f"./{unit.name}", cwd=tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_security_exposure(unit: Path) -> None:
    if not offline_supported():
        pytest.skip("systemd-analyze security --offline needs systemd 250 or later")
    result = analyze("security", "--offline=yes", "--no-pager", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_is_type_notify_with_a_watchdog(unit: Path) -> None:
    """What bridge/ops/sdnotify.py relies on, and the drain's budget."""
    assert unit_settings(unit, "Type") == ["notify"]
    assert unit_settings(unit, "NotifyAccess") == ["main"]
    assert unit_settings(unit, "WatchdogSec") == ["30s"]
    # One webhook spool per process: a worker resumes at start whatever its spool holds.
    expected_state = "pipecat-bridge/worker-%i" if "@" in unit.name else "pipecat-bridge"
    assert unit_settings(unit, "StateDirectory") == [expected_state]
    assert int(unit_settings(unit, "TimeoutStopSec")[0]) >= 30 + 10  # drain + clean-up


# ---- the seccomp rules, emulated ---------------------------------------------------------------

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
# The filters systemd adds for other settings in the unit (src/core/execute.c).
IMPLIED_DENY = {
    "ProtectClock": ["@clock"],
    "ProtectKernelModules": ["@module"],
    "ProtectKernelLogs": ["syslog"],
    "PrivateDevices": ["@raw-io"],
}


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


@functools.cache
def syscall_group(name: str) -> frozenset[str]:
    """A `systemd-analyze syscall-filter` group, nested groups expanded; a syscall: itself."""
    if not name.startswith("@"):
        return frozenset({name})
    lines = analyze("syscall-filter", name).stdout.splitlines()
    members = [line.strip() for line in lines[1:] if line.strip()]
    out: set[str] = set()
    for member in members:
        if not member.startswith("#"):
            out |= syscall_group(member)
    return frozenset(out)


def unit_syscall_allowlist(unit: Path) -> set[str]:
    allowed: set[str] = set()
    denied: set[str] = set()
    for value in unit_settings(unit, "SystemCallFilter"):
        target, names = (denied, value[1:]) if value.startswith("~") else (allowed, value)
        for name in names.split():
            target |= syscall_group(name)
    for setting, groups in IMPLIED_DENY.items():
        if unit_settings(unit, setting) == ["yes"]:
            for group in groups:
                denied |= syscall_group(group)
    return allowed - denied


def unit_address_families(unit: Path) -> set[int]:
    (value,) = unit_settings(unit, "RestrictAddressFamilies")
    return {getattr(socket, name) for name in value.split()}


class Seccomp:
    """The few libseccomp calls needed: one filter per instance, loaded with load()."""

    def __init__(self, default_action: int) -> None:
        self.lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.lib.seccomp_init.argtypes = [ctypes.c_uint32]
        self.lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
            ctypes.POINTER(ScmpArgCmp),
        ]  # fmt: skip
        self.lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        self.lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self.ctx = self.lib.seccomp_init(default_action)
        assert self.ctx, "seccomp_init failed"

    def rule(self, action: int, syscall: str, *cmps: tuple[int, int, int, int]) -> None:
        number = self.lib.seccomp_syscall_resolve_name(syscall.encode())
        if number < 0:
            return  # not on this architecture, as systemd skips it
        array = (ScmpArgCmp * max(1, len(cmps)))(*(ScmpArgCmp(*c) for c in cmps))
        rc = self.lib.seccomp_rule_add_array(self.ctx, action, number, len(cmps), array)
        assert rc == 0, f"seccomp_rule_add {syscall}: {os.strerror(-rc)}"

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        assert rc == 0, f"seccomp_load: {os.strerror(-rc)}"


def apply_unit_seccomp(unit: Path) -> None:
    """This process from now on, and whatever it execs, under the unit's seccomp rules."""
    eperm = scmp_act_errno(errno.EPERM)
    if unit_settings(unit, "MemoryDenyWriteExecute") == ["yes"]:  # seccomp-util.c's rules
        mdwe = Seccomp(SCMP_ACT_ALLOW)
        wx = PROT_WRITE | PROT_EXEC
        mdwe.rule(eperm, "mmap", (2, SCMP_CMP_MASKED_EQ, wx, wx))
        for call in ("mprotect", "pkey_mprotect"):
            mdwe.rule(eperm, call, (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        mdwe.rule(eperm, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        mdwe.load()
    families = Seccomp(SCMP_ACT_ALLOW)
    for family in set(range(46)) - unit_address_families(unit):
        families.rule(scmp_act_errno(errno.EAFNOSUPPORT), "socket", (0, SCMP_CMP_EQ, family, 0))
    families.load()
    allowlist = Seccomp(scmp_act_errno(errno.EPERM))  # SystemCallErrorNumber=EPERM
    for call in unit_syscall_allowlist(unit):
        allowlist.rule(SCMP_ACT_ALLOW, call)
    allowlist.load()


# What the service does, under the rules; and three things the rules must refuse, to show that
# they are in force.
SMOKE = r"""
import asyncio, mmap, os, socket, sqlite3, sys, tempfile
import numpy as np, orjson, uvloop
import bridge.service.cli, bridge.ops.sdnotify
from prometheus_client import ProcessCollector

def refused(call, code):
    try:
        call()
    except OSError as exc:
        assert exc.errno == code, exc
    else:
        raise AssertionError(f"{call} was allowed")

refused(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC), 1)
refused(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW), 97)
refused(lambda: os.sched_setaffinity(0, {0}), 1)

pcm = (np.sin(np.arange(16000) / 8.0) * 8000).astype(np.int16)
big = np.ones((300, 300))
assert (big @ big)[0, 0] == 300.0  # OpenBLAS and its threads
assert np.interp(np.arange(0, 160, 0.5), np.arange(160), pcm[:160]).size == 320
message = {"event": "media", "n": [1, 2]}
assert orjson.loads(orjson.dumps(message)) == message
assert any(m.name == "process_cpu_seconds" for m in ProcessCollector(registry=None).collect())

async def main(state):
    db = sqlite3.connect(os.path.join(state, "spool.sqlite"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)"); db.execute("INSERT INTO t VALUES (1)"); db.commit()
    notify_path = os.path.join(state, "notify")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(notify_path)
    loop = asyncio.get_running_loop()
    await loop.getaddrinfo("localhost", 80)
    await loop.run_in_executor(None, sum, [1, 2])
    got = loop.create_future()
    class Echo(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            got.set_result(data)
    rtp, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    rtp_addr = rtp.get_extra_info("sockname")
    out, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=rtp_addr)
    out.sendto(b"\x80" * 172)
    assert await got == b"\x80" * 172
    async def serve(reader, writer):
        writer.write(await reader.readexactly(5)); await writer.drain(); writer.close()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    writer.write(b"hello"); assert await reader.readexactly(5) == b"hello"
    writer.close(); server.close()
    notifier = bridge.ops.sdnotify.Notifier(notify_path.encode())
    notifier.ready()
    assert notifier.sent == 1 and notifier.failures == 0

with tempfile.TemporaryDirectory() as state:
    uvloop.run(main(state))
print("smoke ok")
"""


@pytest.mark.skipif(
    ANALYZE is None
    or not sys.platform.startswith("linux")
    or not ctypes.util.find_library("seccomp"),
    reason="needs Linux, libseccomp and systemd-analyze",
)
def test_the_service_runs_under_the_units_seccomp_rules() -> None:
    result = subprocess.run(
        [sys.executable, __file__, sys.executable, "-c", SMOKE],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "smoke ok\n"), result.stderr


def main(argv: Iterable[str]) -> None:
    command = list(argv)
    apply_unit_seccomp(UNITS[0])
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
