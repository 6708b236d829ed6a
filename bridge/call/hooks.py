"""What the halves of the ARI call machine (bridge.call.transfer, .recorder, .redial) ask of
the machine they are mixed into. Pure: declarations only, the machine provides them."""

from __future__ import annotations

from bridge.call.commands import Command, EndedBy
from bridge.call.resources import ResourceKind, Resources


class MachineHooks:
    res: Resources

    def _emit(self, cmd: Command) -> None:
        raise NotImplementedError

    def _emit_teardown(self, cmd: Command) -> None:
        raise NotImplementedError

    def _teardown(self, kind: ResourceKind) -> None:
        raise NotImplementedError

    def _end(self, reason: str, *, by: EndedBy, fallback: bool = False) -> None:
        raise NotImplementedError

    def _note(self, event: str, **fields: object) -> None:
        """One line for the runner to log."""
        raise NotImplementedError

    @property
    def _caller_id(self) -> str:
        raise NotImplementedError

    @property
    def _bridge_id(self) -> str:
        raise NotImplementedError
