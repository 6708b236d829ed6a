"""ARI REST client: one aiohttp session, basic auth, a timeout on every request.

A non-2xx answer raises `AriHttpError` with Asterisk's own text (`message`, or `error` as
originate uses, asterisk-facts §17); a connection failure or timeout raises
`AriUnavailableError`. Only idempotent requests are retried, and only on transport failures:
retrying a POST that may have been applied would create a second resource.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from ari.models import Bridge, Channel, parse_bridge, parse_channel
from bridge.errors import AriEventError, AriHttpError, AriUnavailableError
from bridge.logs import get_logger

log = get_logger("ari.rest")


def normalize_base_url(url: str) -> str:
    """Asterisk's HTTP root, from a URL given with or without the trailing /ari."""
    url = url.rstrip("/")
    if url.endswith("/ari"):
        url = url[: -len("/ari")]
    return url


def _error_text(body: str, reason: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip() or reason
    if isinstance(data, dict):
        for key in ("message", "error"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return reason


class AriRestClient:
    def __init__(
        self,
        base_url: str,
        user: str,
        password: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
    ) -> None:
        self.root = normalize_base_url(base_url)
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._headers = {"Authorization": f"Basic {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retries = retries
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AriRestClient:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            # One connection pool for every call; a limit well above any realistic call
            # setup burst, so setups do not queue behind each other.
            connector = aiohttp.TCPConnector(limit=64, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=self._timeout, connector=connector
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- transport ----------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        idempotent: bool = False,
        json_body: Mapping[str, Any] | None = None,
    ) -> Any:
        """JSON body of a 2xx answer (None for 204); raises AriHttpError/AriUnavailableError.
        `json_body`: what ARI takes only in the body (originate's `variables`)."""
        if not idempotent:
            return await self._request_once(method, path, params, json_body)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retries),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            retry=retry_if_exception_type(AriUnavailableError),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._request_once(method, path, params, json_body)
        raise AssertionError("unreachable: tenacity reraises")

    async def _request_once(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        json_body: Mapping[str, Any] | None = None,
    ) -> Any:
        if self._session is None:
            await self.open()
        assert self._session is not None
        url = f"{self.root}/ari{path}"
        try:
            async with self._session.request(method, url, params=params, json=json_body) as resp:
                body = await resp.text()
                status = resp.status
                reason = resp.reason or ""
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise AriUnavailableError(f"{method} {path}: {type(exc).__name__} {exc}") from None
        log.debug("ari_rest", method=method, path=path, status=status)
        if not 200 <= status < 300:
            raise AriHttpError(method, path, status, _error_text(body, reason))
        if status == 204 or not body:
            return None
        try:
            return json.loads(body)
        except ValueError:
            raise AriHttpError(method, path, status, "answer is not JSON") from None

    # ---- typed operations ---------------------------------------------------------------

    async def answer(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/answer", idempotent=True)

    async def hangup(self, channel_id: str, reason: str = "") -> None:
        """DELETE the channel; `reason` is ARI's hang-up reason (busy, congestion, ...) or a
        Q.850 code in digits: the far end sees that cause (recorded: hangup_reason; the
        app's own events say cause 32 whatever it is)."""
        params = None
        if reason:
            params = {"reason_code": reason} if reason.isdigit() else {"reason": reason}
        await self.request("DELETE", f"/channels/{channel_id}", params, idempotent=True)

    async def send_dtmf(
        self, channel_id: str, digits: str, *, duration_ms: int = 150, between_ms: int = 200
    ) -> None:
        """Play `digits` to the channel's far end (out of band where the channel can): 204
        at once, the digits follow; no event reports them (recorded: dtmf_to_caller). Not
        idempotent: a resend would dial them twice."""
        params = {"dtmf": digits, "duration": str(duration_ms), "between": str(between_ms)}
        await self.request("POST", f"/channels/{channel_id}/dtmf", params)

    async def snoop(
        self, channel_id: str, *, snoop_id: str, spy: str, app: str, app_args: str
    ) -> Channel:
        """A snoop channel on `channel_id` (spy in: what comes from it, out: what goes to
        it) entering `app`; it can be recorded only once its StasisStart is in (409 before:
        recorded snoop_record)."""
        body = await self.request(
            "POST", f"/channels/{channel_id}/snoop",
            {"spy": spy, "app": app, "appArgs": app_args, "snoopId": snoop_id},
        )  # fmt: skip
        return _parse(parse_channel, body, "POST", f"/channels/{channel_id}/snoop")

    async def record(self, target: str, target_id: str, name: str, fmt: str = "wav") -> None:
        """Start recording a bridge or a channel (`target` "bridges" | "channels") into
        Asterisk's recording directory as `name` (may hold a folder, never ".."): 201
        queued, then RecordingStarted. An existing name is refused (409) rather than
        overwritten: a recording is never lost to a name clash."""
        await self.request(
            "POST", f"/{target}/{target_id}/record",
            {"name": name, "format": fmt, "ifExists": "fail", "beep": "false",
             "terminateOn": "none", "maxDurationSeconds": "0", "maxSilenceSeconds": "0"},
        )  # fmt: skip

    async def stop_recording(self, name: str) -> None:
        """Stop and finalise a live recording (204, RecordingFinished at once)."""
        await self.request("POST", f"/recordings/live/{quote(name, safe='')}/stop",
                           idempotent=True)  # fmt: skip

    async def play_bridge(self, bridge_id: str, media: str, playback_id: str) -> None:
        """Play `media` (e.g. tone:ring, looping until stopped) into a bridge."""
        await self.request(
            "POST", f"/bridges/{bridge_id}/play", {"media": media, "playbackId": playback_id}
        )

    async def stop_playback(self, playback_id: str) -> None:
        await self.request("DELETE", f"/playbacks/{playback_id}", idempotent=True)

    async def bridge_moh(self, bridge_id: str, *, on: bool) -> None:
        await self.request("POST" if on else "DELETE", f"/bridges/{bridge_id}/moh",
                           idempotent=True)  # fmt: skip

    async def create_bridge(self, bridge_id: str, name: str, kind: str = "mixing") -> Bridge:
        body = await self.request(
            "POST", "/bridges", {"type": kind, "name": name, "bridgeId": bridge_id}
        )
        return _parse(parse_bridge, body, "POST", "/bridges")

    async def delete_bridge(self, bridge_id: str) -> None:
        await self.request("DELETE", f"/bridges/{bridge_id}", idempotent=True)

    async def add_channels(self, bridge_id: str, channel_ids: Sequence[str]) -> None:
        await self.request(
            "POST", f"/bridges/{bridge_id}/addChannel", {"channel": ",".join(channel_ids)}
        )

    async def create_external_media(
        self,
        *,
        channel_id: str,
        app: str,
        params: Mapping[str, str],
    ) -> Channel:
        """`params`: the transport's own (format, encapsulation, transport, external_host,
        data, connection_type, transport_data, ...), as its media leg gives them."""
        body = await self.request(
            "POST",
            "/channels/externalMedia",
            {"app": app, "direction": "both", **params, "channelId": channel_id},
        )
        return _parse(parse_channel, body, "POST", "/channels/externalMedia")

    async def continue_in_dialplan(
        self, channel_id: str, context: str, extension: str, priority: int
    ) -> None:
        await self.request(
            "POST",
            f"/channels/{channel_id}/continue",
            {"context": context, "extension": extension, "priority": str(priority)},
        )

    async def play(self, channel_id: str, media: str, playback_id: str) -> None:
        """Start playing `media` (e.g. sound:sorry) to a channel; it ends with a
        PlaybackFinished event whose playback id is `playback_id`. Not idempotent: a resend
        would play twice."""
        await self.request(
            "POST", f"/channels/{channel_id}/play", {"media": media, "playbackId": playback_id}
        )

    async def originate(
        self,
        *,
        endpoint: str,
        app: str,
        app_args: str,
        channel_id: str,
        caller_id: str = "",
        ring_timeout: int = 30,
        variables: Mapping[str, str] | None = None,
        originator: str = "",
    ) -> Channel:
        """POST /channels into `app` with a pre-assigned `channel_id`: 200 at once with the
        channel Down; it rings, and enters the app (StasisStart) only when answered. A busy
        or unanswered far end shows only as events (a `Dial` status, the ChannelDestroyed
        cause). An unknown technology is refused at once: 500 "Allocation failed". Not
        idempotent: a resend would dial twice."""
        params = {"endpoint": endpoint, "app": app, "appArgs": app_args,
                  "channelId": channel_id, "timeout": str(ring_timeout)}  # fmt: skip
        if caller_id:
            params["callerId"] = caller_id
        if originator:
            # The channel it is made for: Asterisk takes the originator's formats (no
            # transcoding once they are bridged) and its linkedid (one call in the CDRs).
            params["originator"] = originator
        json_body = {"variables": dict(variables)} if variables else None
        body = await self.request("POST", "/channels", params, json_body=json_body)
        return _parse(parse_channel, body, "POST", "/channels")

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        await self.request(
            "POST", f"/channels/{channel_id}/variable", {"variable": name, "value": value},
            idempotent=True,
        )  # fmt: skip

    async def claim(self, channel_id: str, application: str) -> bool:
        """POST /events/claim: take a broadcast call for `application`. True: won (204, the
        channel's StasisStart follows); False: lost (409: another app claimed it first, or
        its session runs; 404: too late, the broadcast timed out or the caller hung up).
        Anything else raises. Not idempotent: only the first claim can win."""
        try:
            await self.request(
                "POST", "/events/claim", {"channelId": channel_id, "application": application}
            )
        except AriHttpError as exc:
            if exc.status not in (404, 409):
                raise
            log.debug("claim_lost", channel_id=channel_id, status=exc.status, error=str(exc))
            return False
        return True

    async def list_channels(self) -> list[Channel]:
        body = await self.request("GET", "/channels", idempotent=True)
        return [_parse(parse_channel, c, "GET", "/channels") for c in body or []]

    async def list_bridges(self) -> list[Bridge]:
        body = await self.request("GET", "/bridges", idempotent=True)
        return [_parse(parse_bridge, b, "GET", "/bridges") for b in body or []]

    async def applications(self) -> list[dict[str, Any]]:
        """GET /applications: every app Asterisk knows, a dead one's too (no liveness)."""
        body = await self.request("GET", "/applications", idempotent=True)
        if not isinstance(body, list):
            raise AriHttpError("GET", "/applications", 200, "answer is not a list")
        return [app for app in body if isinstance(app, dict)]

    async def global_variable(self, name: str) -> str:
        """A global variable's value; an unset one is "" (Asterisk answers no 404 here)."""
        body = await self.request(
            "GET", "/asterisk/variable", {"variable": name}, idempotent=True
        )
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, str):
            raise AriHttpError("GET", "/asterisk/variable", 200, "answer has no string value")
        return value

    async def set_global_variable(self, name: str, value: str | None) -> None:
        """Set a global variable; None removes it (Asterisk's setvar with no value)."""
        params = {"variable": name} if value is None else {"variable": name, "value": value}
        # The same value twice is the same state: safe to retry.
        await self.request("POST", "/asterisk/variable", params, idempotent=True)

    async def application(self, app: str) -> dict[str, Any]:
        body = await self.request("GET", f"/applications/{app}", idempotent=True)
        if not isinstance(body, dict):
            raise AriHttpError("GET", f"/applications/{app}", 200, "answer is not an object")
        return body


def _parse(parser: Any, body: object, method: str, path: str) -> Any:
    """A 2xx body that is not the resource it should be is an error of that request."""
    try:
        return parser(body)
    except AriEventError as exc:
        raise AriHttpError(method, path, 200, f"unexpected answer: {exc}") from None
