"""The simulated Asterisk's system resources: `/asterisk/info`, `/asterisk/modules[/{name}]`,
`/asterisk/variable`, and the knobs that misconfigure them (what `pipecat-bridge check` reads).

Recorded (meta): the info body and the whole module list of the lab's 23.4.1. Not recorded,
so from Asterisk 23.4.1's `res/ari/resource_asterisk.c`, `main/loader.c` and
`main/pbx_variables.c`:
* `GET /asterisk/modules/{name}`: 404 "Module could not be found in running modules" when no
  module of that name is loaded (`ast_module_check`, which ignores a ".so" suffix and case);
  then the module's entry, found by an exact `strcmp` of the name as listed, so
  `chan_websocket` (listed as `chan_websocket.so`) answers 409 "Module information could not be
  retrieved";
* `GET /asterisk/variable?variable=NAME`: a global variable, or a built-in such as
  `ASTETCDIR` (the config directory): 200 `{"value": ...}`, an unset one `{"value": ""}` (not a
  404, unlike a channel variable); no name: 400 "Variable name is required";
* `POST /asterisk/variable?variable=NAME&value=V`: sets the global (`pbx_builtin_setvar_helper`
  with no channel), 204; without `value` the global is removed (reads as `""` again); no name:
  400 as for GET (`ast_ari_asterisk_set_global_var`);
* `GET /asterisk/info?only=system,build`: only those parts, in the recorded order.

Knobs: `version` (what `/asterisk/info` and the `Server` header say: an older Asterisk),
`unload(name)` (a module modules.conf does not load), `variables` (`ASTETCDIR` defaults to
Asterisk's own default, /etc/asterisk: the lab's value was not recorded). Wrong credentials are
the simulator's `password` against the client's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridge.tools.sim.recording import FIXTURES_DIR, load_recording
from bridge.tools.sim.templates import Reply, error_reply, reshape

RECORDED_VERSION = "23.4.1"
DEFAULT_ETC_DIR = "/etc/asterisk"


def module_base(name: str) -> str:
    """A module name as Asterisk's loader compares it: no ".so", any case."""
    name = name.lower()
    return name[:-3] if name.endswith(".so") else name


class SimSystem:
    def __init__(self, fixtures_dir: Path = FIXTURES_DIR) -> None:
        meta = load_recording("meta", fixtures_dir)
        self._info = _recorded_body(meta, "/ari/asterisk/info")
        self._modules: tuple[Mapping[str, Any], ...] = tuple(
            _recorded_body(meta, "/ari/asterisk/modules")
        )
        self.version = RECORDED_VERSION
        self.variables: dict[str, str] = {"ASTETCDIR": DEFAULT_ETC_DIR}
        self._unloaded: set[str] = set()

    @property
    def server(self) -> str:
        """The `Server` header: Asterisk's http.c sends `Asterisk/<version>`."""
        return f"Asterisk/{self.version}"

    def unload(self, *names: str) -> None:
        """These modules are not loaded (modules.conf `noload`, or never built)."""
        self._unloaded.update(module_base(name) for name in names)

    def load(self, *names: str) -> None:
        self._unloaded.difference_update(module_base(name) for name in names)

    def modules(self) -> list[Mapping[str, Any]]:
        return [m for m in self._modules if module_base(str(m["name"])) not in self._unloaded]

    # -- resources ------------------------------------------------------------------------

    async def info(self, q: dict[str, str]) -> Reply:
        body = reshape(self._info, {"system": {"version": self.version}})
        only = [part for part in q.get("only", "").split(",") if part]
        if only:
            body = {key: value for key, value in body.items() if key in only}
        return Reply(200, body)

    async def list_modules(self, q: dict[str, str]) -> Reply:
        return Reply(200, self.modules())

    async def get_module(self, q: dict[str, str], name: str) -> Reply:
        loaded = [m for m in self.modules() if module_base(str(m["name"])) == module_base(name)]
        if not loaded:
            return error_reply(404, "Module could not be found in running modules")
        exact = [m for m in loaded if m["name"] == name]
        if not exact:
            return error_reply(409, "Module information could not be retrieved")
        return Reply(200, dict(exact[0]))

    async def get_global_var(self, q: dict[str, str]) -> Reply:
        name = q.get("variable")
        if not name:
            return error_reply(400, "Variable name is required")
        return Reply(200, {"value": self.variables.get(name, "")})

    async def set_global_var(self, q: dict[str, str]) -> Reply:
        name = q.get("variable")
        if not name:
            return error_reply(400, "Variable name is required")
        if "value" in q:
            self.variables[name] = q["value"]
        else:  # a NULL value: pbx_builtin_setvar_helper deletes the variable
            self.variables.pop(name, None)
        return Reply(204)


def _recorded_body(recording: Any, path: str) -> Any:
    for ex in recording.rest:
        if ex.method == "GET" and ex.path == path and ex.status == 200:
            return ex.body
    raise LookupError(f"{recording.name}: no GET {path}")
