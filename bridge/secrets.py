"""Secret files (passwords, tokens, signing keys): read once at start-up, refused when anyone
on the VM could read them. A leaf module, so every layer can use it."""

from __future__ import annotations

import os

from bridge.errors import ConfigError


def read_secret_file(path: str, flag: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            if os.fstat(fh.fileno()).st_mode & 0o004:
                # A secret anyone on the VM can read is not a secret; refuse rather than warn,
                # since the log line would be missed and the file left as it is.
                raise ConfigError(f"{flag} {path} is world-readable: chmod o-r it")
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {flag}: {exc.strerror}") from None
