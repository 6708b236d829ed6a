"""The simulator's system resources (bridge.tools.sim.system): the recorded module list byte for
byte, the unrecorded endpoints as resource_asterisk.c answers them, and the knobs."""

from __future__ import annotations

import json

from bridge.tools.sim.asterisk import SimulatedAsterisk
from bridge.tools.sim.recording import load_recording
from tests.tools.sim.ari_client import Ari, assert_asterisk_headers


def recorded_text(path: str) -> str:
    meta = load_recording("meta")
    row = next(
        json.loads(line)
        for line in (meta.path / "session.jsonl").read_text().splitlines()
        if json.loads(line).get("kind") == "rest_response" and json.loads(line)["path"] == path
    )
    return str(row["body_text"])


async def test_modules_are_the_recorded_answer_byte_for_byte(ari: Ari) -> None:
    answer = await ari.request("GET", "/ari/asterisk/modules")
    assert (answer.status, answer.reason) == (200, "OK")
    assert_asterisk_headers(answer.headers, has_body=True)
    assert answer.text == recorded_text("/ari/asterisk/modules")
    info = await ari.request("GET", "/ari/asterisk/info")
    assert info.text == recorded_text("/ari/asterisk/info")


async def test_one_module_as_resource_asterisk_c_answers(ari: Ari) -> None:
    got = await ari.request("GET", "/ari/asterisk/modules/chan_websocket.so")
    assert got.status == 200
    assert got.body == {"name": "chan_websocket.so", "description": got.body["description"],
                        "use_count": got.body["use_count"], "status": "Running",
                        "support_level": got.body["support_level"]}  # fmt: skip
    assert list(got.body) == ["name", "description", "use_count", "status", "support_level"]
    # ast_module_check() ignores ".so"; identify_module() then strcmp()s the listed name.
    bare = await ari.request("GET", "/ari/asterisk/modules/chan_websocket")
    assert (bare.status, bare.reason, bare.body) == (
        409, "Conflict", {"message": "Module information could not be retrieved"}
    )  # fmt: skip
    none = await ari.request("GET", "/ari/asterisk/modules/chan_nothing.so")
    assert (none.status, none.reason, none.body) == (
        404, "Not Found", {"message": "Module could not be found in running modules"}
    )  # fmt: skip


async def test_unloaded_modules(sim: SimulatedAsterisk, ari: Ari) -> None:
    sim.system.unload("chan_websocket", "RES_AUDIOSOCKET.so")
    names = [m["name"] for m in (await ari.request("GET", "/ari/asterisk/modules")).body]
    assert "chan_websocket.so" not in names and "res_audiosocket.so" not in names
    assert "chan_audiosocket.so" in names
    gone = await ari.request("GET", "/ari/asterisk/modules/chan_websocket.so")
    assert gone.status == 404
    sim.system.load("chan_websocket.so")
    assert (await ari.request("GET", "/ari/asterisk/modules/chan_websocket.so")).status == 200


async def test_global_variables(sim: SimulatedAsterisk, ari: Ari) -> None:
    etc = await ari.request("GET", "/ari/asterisk/variable", variable="ASTETCDIR")
    assert (etc.status, etc.text) == (200, '{"value":"/etc/asterisk"}')
    sim.system.variables["ASTETCDIR"] = "/tmp/x"
    etc = await ari.request("GET", "/ari/asterisk/variable", variable="ASTETCDIR")
    assert etc.body == {"value": "/tmp/x"}
    unset = await ari.request("GET", "/ari/asterisk/variable", variable="NO_SUCH_VAR")
    assert (unset.status, unset.body) == (200, {"value": ""})  # a global: no 404
    missing = await ari.request("GET", "/ari/asterisk/variable")
    assert (missing.status, missing.reason, missing.body) == (
        400, "Bad Request", {"message": "Variable name is required"}
    )  # fmt: skip
    anonymous = await ari.anonymous("GET", "/ari/asterisk/variable", variable="ASTETCDIR")
    assert anonymous.status == 401


async def test_global_variables_are_set_and_removed_by_post(
    sim: SimulatedAsterisk, ari: Ari
) -> None:
    path = "/ari/asterisk/variable"
    put = await ari.request("POST", path, variable="PIPECAT_X", value="1 a b")
    assert (put.status, put.text) == (204, "")
    assert (await ari.request("GET", path, variable="PIPECAT_X")).body == {"value": "1 a b"}
    emptied = await ari.request("POST", path, variable="PIPECAT_X", value="")
    assert emptied.status == 204 and sim.system.variables["PIPECAT_X"] == ""
    removed = await ari.request("POST", path, variable="PIPECAT_X")  # no value: deleted
    assert removed.status == 204 and "PIPECAT_X" not in sim.system.variables
    assert (await ari.request("GET", path, variable="PIPECAT_X")).body == {"value": ""}
    nameless = await ari.request("POST", path, value="x")
    assert (nameless.status, nameless.body) == (400, {"message": "Variable name is required"})


async def test_an_older_version(sim: SimulatedAsterisk, ari: Ari) -> None:
    sim.system.version = "20.15.2"
    info = await ari.request("GET", "/ari/asterisk/info")
    assert info.body["system"]["version"] == "20.15.2"
    assert info.headers["Server"] == "Asterisk/20.15.2"
    only = await ari.request("GET", "/ari/asterisk/info", only="system")
    assert list(only.body) == ["system"]
