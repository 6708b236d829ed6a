from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from ari.events_socket import events_url
from ari.rest import AriRestClient, normalize_base_url
from bridge.errors import ConfigError
from bridge.media.ports import parse_port_range
from bridge.service.cli import main
from bridge.service.config import Settings, parse_settings

PASSWORD_ENV = {"BRIDGE_ARI_PASSWORD": "s3cret"}


def settings(*flags: str, **env: str) -> Settings:
    """parse_settings for `run FLAGS` with a password in the environment unless env sets one."""
    return parse_settings(["run", *flags], {**PASSWORD_ENV, **env})


def assert_config_error(match: str, *flags: str, **env: str) -> None:
    with pytest.raises(ConfigError, match=match):
        settings(*flags, **env)


# ---- defaults, flags, environment --------------------------------------------------------


def test_defaults_with_only_a_password() -> None:
    assert settings() == Settings(ari_password="s3cret")


# (flag, env var, value given, Settings field, parsed value)
EVERY_FLAG = [
    ("--ari-url", "BRIDGE_ARI_URL", "https://pbx:8089/ari", "ari_url", "https://pbx:8089/ari"),
    ("--ari-user", "BRIDGE_ARI_USER", "bridge", "ari_user", "bridge"),
    ("--ari-password", "BRIDGE_ARI_PASSWORD", "pw2", "ari_password", "pw2"),
    ("--app", "BRIDGE_APP", "voicebot", "app", "voicebot"),
    ("--bot-url", "BRIDGE_BOT_URL", "wss://bot/{call_id}", "bot_url", "wss://bot/{call_id}"),
    ("--rtp-host", "BRIDGE_RTP_HOST", "10.0.0.5", "rtp_host", "10.0.0.5"),
    ("--rtp-ports", "BRIDGE_RTP_PORTS", "30000-30099", "rtp_ports", (30000, 30099)),
    ("--format", "BRIDGE_FORMAT", "slin16", "format", "slin16"),
    ("--dialect", "BRIDGE_DIALECT", "vonage", "dialect", "vonage"),
    ("--playout-reserve-ms", "BRIDGE_PLAYOUT_RESERVE_MS", "60", "playout_reserve_ms", 60),
    ("--reorder-window-ms", "BRIDGE_REORDER_WINDOW_MS", "0", "reorder_window_ms", 0),
    ("--bot-stall-timeout", "BRIDGE_BOT_STALL_TIMEOUT", "2.5", "bot_stall_timeout", 2.5),
    ("--fallback", "BRIDGE_FALLBACK", "hangup", "fallback", "hangup"),
    ("--fallback-extension", "BRIDGE_FALLBACK_EXTENSION", "100", "fallback_extension", "100"),
    ("--fallback-priority", "BRIDGE_FALLBACK_PRIORITY", "2", "fallback_priority", 2),
    ("--fallback-sound", "BRIDGE_FALLBACK_SOUND", "sound:sorry", "fallback_sound", "sound:sorry"),
    ("--max-calls", "BRIDGE_MAX_CALLS", "150", "max_calls", 150),
    ("--drain-timeout", "BRIDGE_DRAIN_TIMEOUT", "12", "drain_timeout", 12.0),
    ("--max-queue-ms", "BRIDGE_MAX_QUEUE_MS", "500", "max_queue_ms", 500),
    ("--bot-connect-timeout", "BRIDGE_BOT_CONNECT_TIMEOUT", "1.5", "bot_connect_timeout", 1.5),
    ("--setup-timeout", "BRIDGE_SETUP_TIMEOUT", "7", "setup_timeout", 7.0),
    ("--rest-timeout", "BRIDGE_REST_TIMEOUT", "0.25", "rest_timeout", 0.25),
    ("--id-prefix", "BRIDGE_ID_PREFIX", "x-", "id_prefix", "x-"),
    ("--log-format", "BRIDGE_LOG_FORMAT", "json", "log_format", "json"),
    ("--log-level", "BRIDGE_LOG_LEVEL", "debug", "log_level", "debug"),
]


@pytest.mark.parametrize(("flag", "env_var", "given", "field", "parsed"), EVERY_FLAG)
def test_every_flag_is_read_from_the_command_line(
    flag: str, env_var: str, given: str, field: str, parsed: object
) -> None:
    assert getattr(settings(flag, given), field) == parsed


@pytest.mark.parametrize(("flag", "env_var", "given", "field", "parsed"), EVERY_FLAG)
def test_every_flag_is_read_from_the_environment(
    flag: str, env_var: str, given: str, field: str, parsed: object
) -> None:
    assert getattr(settings(**{env_var: given}), field) == parsed


def test_flag_wins_over_environment() -> None:
    got = settings(
        "--app",
        "from-flag",
        "--rtp-ports",
        "40000-40009",
        "--max-queue-ms",
        "100",
        BRIDGE_APP="from-env",
        BRIDGE_RTP_PORTS="30000-30009",
        BRIDGE_MAX_QUEUE_MS="900",
    )
    assert (got.app, got.rtp_ports, got.max_queue_ms) == ("from-flag", (40000, 40009), 100)


def test_flag_wins_even_over_a_bad_environment_value() -> None:
    assert settings("--format", "ulaw", BRIDGE_FORMAT="alaw").format == "ulaw"


def test_unrelated_environment_is_ignored() -> None:
    assert settings(ARI_URL="ftp://x", BRIDGE_BOGUS="1") == Settings(ari_password="s3cret")


def test_ari_host_comes_from_the_url() -> None:
    assert settings("--ari-url", "http://pbx.example:8088/ari").ari_host == "pbx.example"


# ---- the password ------------------------------------------------------------------------


def secret_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "ari.secret"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_world_readable_password_file_is_refused(tmp_path: Path) -> None:
    secret = secret_file(tmp_path, "pw\n", 0o644)
    with pytest.raises(ConfigError, match="world-readable"):
        parse_settings(["run", "--ari-password-file", str(secret)], {})


def test_password_file_is_read_and_stripped(tmp_path: Path) -> None:
    secret = secret_file(tmp_path, "  from-file\n")
    got = parse_settings(["run", "--ari-password-file", str(secret)], {})
    assert got.ari_password == "from-file"


def test_password_file_from_environment(tmp_path: Path) -> None:
    secret = secret_file(tmp_path, "from-file\n")
    got = parse_settings(["run"], {"BRIDGE_ARI_PASSWORD_FILE": str(secret)})
    assert got.ari_password == "from-file"


def test_password_flag_wins_over_password_file(tmp_path: Path) -> None:
    secret = secret_file(tmp_path, "from-file\n")
    argv = ["run", "--ari-password", "from-flag", "--ari-password-file", str(secret)]
    assert parse_settings(argv, {}).ari_password == "from-flag"


def test_password_file_flag_wins_over_password_in_environment(tmp_path: Path) -> None:
    secret = secret_file(tmp_path, "from-file\n")
    got = settings("--ari-password-file", str(secret), BRIDGE_ARI_PASSWORD="from-env")
    assert got.ari_password == "from-file"


def test_password_flag_wins_over_password_file_in_environment(tmp_path: Path) -> None:
    secret = secret_file(tmp_path, "from-file\n")
    got = parse_settings(
        ["run", "--ari-password", "from-flag"], {"BRIDGE_ARI_PASSWORD_FILE": str(secret)}
    )
    assert got.ari_password == "from-flag"


def test_missing_password_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="cannot read --ari-password-file: No such file"):
        parse_settings(["run", "--ari-password-file", str(missing)], {})


def test_directory_as_password_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read --ari-password-file"):
        parse_settings(["run", "--ari-password-file", str(tmp_path)], {})


NO_LISTENERS = ["--audiosocket-listen", "", "--websocket-listen", ""]


def test_no_password_and_no_listener_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no ARI password and no dialplan listener"):
        parse_settings(["run", *NO_LISTENERS], {})


def test_no_password_serves_dialplan_calls_only() -> None:
    got = parse_settings(["run"], {})
    assert not got.ari_enabled
    assert (got.audiosocket_listen, got.websocket_listen) == ("127.0.0.1:9092", "127.0.0.1:9093")


def test_empty_password_file_is_no_password(tmp_path: Path) -> None:
    secret = secret_file(tmp_path, "\n")
    with pytest.raises(ConfigError, match="no ARI password"):
        parse_settings(["run", "--ari-password-file", str(secret), *NO_LISTENERS], {})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--transport", "sip"], "--transport must be one of rtp, audiosocket, websocket"),
        (["--format", "slin"], "--format slin is for audiosocket and websocket"),
        (["--transport", "audiosocket", "--audiosocket-listen", ""], "needs --audiosocket-listen"),
        (["--audiosocket-listen", "9092"], "--audiosocket-listen must be HOST:PORT"),
        (["--websocket-listen", "h:99999"], "--websocket-listen must be HOST:PORT"),
        (["--websocket-control", "xml"], "--websocket-control must be one of plain, json"),
        (["--bot-map", "sales=http://x"], "--bot-map entries are NAME=ws://"),
    ],
)
def test_bad_transport_settings_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings(["run", "--ari-password", "pw", *argv], {})


def test_transport_settings_from_flags_and_environment() -> None:
    env = {"BRIDGE_TRANSPORT": "websocket", "BRIDGE_BOT_MAP": "sales=ws://a/x,support=wss://b/y"}
    got = parse_settings(["run", "--ari-password", "pw", "--format", "slin16",
                          "--websocket-control", "json"], env)  # fmt: skip
    assert (got.transport, got.format, got.websocket_control) == ("websocket", "slin16", "json")
    assert got.bot_map == (("sales", "ws://a/x"), ("support", "wss://b/y"))


# ---- silence fill ------------------------------------------------------------------------


def test_silence_fill_is_on_by_default() -> None:
    assert settings().silence_fill is True


def test_no_silence_fill_flag() -> None:
    assert settings("--no-silence-fill").silence_fill is False


@pytest.mark.parametrize("value", ["false", "FALSE", "0", "no", "off", " False "])
def test_silence_fill_off_from_environment(value: str) -> None:
    assert settings(BRIDGE_SILENCE_FILL=value).silence_fill is False


@pytest.mark.parametrize("value", ["true", "1", "yes", "on", "True"])
def test_silence_fill_on_from_environment(value: str) -> None:
    assert settings(BRIDGE_SILENCE_FILL=value).silence_fill is True


def test_no_silence_fill_flag_wins_over_environment() -> None:
    assert settings("--no-silence-fill", BRIDGE_SILENCE_FILL="true").silence_fill is False


def test_unknown_silence_fill_value_is_a_config_error() -> None:
    assert_config_error("BRIDGE_SILENCE_FILL", BRIDGE_SILENCE_FILL="maybe")


# ---- port ranges -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20000-20999", (20000, 20999)),
        ("30000", (30000, 30000)),
        ("1024-65535", (1024, 65535)),
        (" 20000 - 20010 ", (20000, 20010)),
    ],
)
def test_port_range_parses(text: str, expected: tuple[int, int]) -> None:
    assert parse_port_range(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "20000-x", "-20000", "1-2-3", "20000:20999"])
def test_port_range_that_is_not_numbers(text: str) -> None:
    with pytest.raises(ConfigError, match="expected LOW-HIGH"):
        parse_port_range(text)


@pytest.mark.parametrize("text", ["20999-20000", "80-100", "1023-2000", "60000-65536", "0"])
def test_port_range_out_of_bounds(text: str) -> None:
    with pytest.raises(ConfigError, match=r"need 1024 <= LOW <= HIGH <= 65535"):
        parse_port_range(text)


def test_bad_port_range_flag_is_a_config_error() -> None:
    assert_config_error("bad port range '9-5'", "--rtp-ports", "9-5")


def test_port_range_without_an_even_port_is_a_config_error() -> None:
    # Caught while parsing, not later when the controller builds its port pool.
    assert_config_error("holds no even port", "--rtp-ports", "20001")


# ---- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (("--format", "g722"), "--format must be one of ulaw, alaw, slin, slin16"),
        (("--dialect", "plivo"), "--dialect must be one of twilio, exotel, vonage"),
        (("--fallback", "transfer"), "--fallback must be one of hangup, continue"),
        (("--fallback", "continue"), "--fallback continue needs --fallback-context"),
        (("--playout-reserve-ms", "-1"), "--playout-reserve-ms must not be negative"),
        (("--max-calls", "-3"), "--max-calls must not be negative"),
        (("--drain-timeout", "0"), "--drain-timeout must be a positive number"),
        (("--fallback-priority", "0"), "--fallback-priority must be a positive number"),
        (("--playout-reserve-ms", "600", "--max-queue-ms", "500"), "smaller than --max-queue-ms"),
        (("--bot-ca-file", "/nonexistent/ca.pem"), "--bot-ca-file /nonexistent/ca.pem is not"),
        (("--log-format", "xml"), "--log-format must be json or console"),
        (("--log-level", "verbose"), "--log-level must be one of"),
        (("--ari-url", "ws://127.0.0.1:8088"), "--ari-url must start with http:// or https://"),
        (("--ari-url", "127.0.0.1:8088"), "--ari-url must start with http:// or https://"),
        (("--bot-url", "http://bot/ws"), "--bot-url must start with ws:// or wss://"),
        (("--bot-url", "bot:8765/ws"), "--bot-url must start with ws:// or wss://"),
        (("--max-queue-ms", "lots"), "bad number: .*'lots'"),
        (("--max-queue-ms", "2.5"), "bad number: .*'2.5'"),
        (("--rest-timeout", "soon"), "bad number: .*'soon'"),
        (("--setup-timeout", ""), "bad number"),
        (("--rest-timeout", "0"), "--rest-timeout must be a positive number"),
        (("--bot-connect-timeout", "-1"), "--bot-connect-timeout must be a positive number"),
        (("--setup-timeout", "nan"), "--setup-timeout must be a positive number"),
        (("--rest-timeout", "inf"), "--rest-timeout must be a positive number"),
        (("--max-queue-ms", "-20"), "--max-queue-ms must be a positive number"),
    ],
)
def test_bad_values_are_config_errors(flags: tuple[str, str], match: str) -> None:
    assert_config_error(match, *flags)


def test_bad_value_from_environment_is_a_config_error() -> None:
    assert_config_error("--format must be one of ulaw, alaw, slin, slin16", BRIDGE_FORMAT="g729")


# ---- the ARI URL, with or without /ari ---------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        "http://127.0.0.1:8088",
        "http://127.0.0.1:8088/",
        "http://127.0.0.1:8088/ari",
        "http://127.0.0.1:8088/ari/",
    ],
)
def test_ari_url_with_or_without_ari_suffix(given: str) -> None:
    ari_url = settings("--ari-url", given).ari_url
    assert normalize_base_url(ari_url) == "http://127.0.0.1:8088"
    assert AriRestClient(ari_url, "asterisk", "s3cret").root == "http://127.0.0.1:8088"
    assert events_url(ari_url, "pipecat", "asterisk", "s3cret") == (
        "ws://127.0.0.1:8088/ari/events?app=pipecat&api_key=asterisk:s3cret&subscribeAll=false"
    )


def test_ari_url_behind_a_path_prefix_keeps_the_prefix() -> None:
    assert normalize_base_url("http://proxy/asterisk/ari") == "http://proxy/asterisk"
    assert events_url("http://proxy/asterisk/ari", "a", "u", "p").startswith(
        "ws://proxy/asterisk/ari/events?"
    )


def test_https_gives_wss_events_url() -> None:
    assert events_url("https://pbx.example:8089/ari", "pipecat", "asterisk", "s3cret") == (
        "wss://pbx.example:8089/ari/events?app=pipecat&api_key=asterisk:s3cret&subscribeAll=false"
    )


def test_events_url_quotes_what_would_break_the_query() -> None:
    url = events_url("http://h:8088", "my app", "asterisk", "p&w=1#x")
    query = parse_qs(urlsplit(url).query)
    assert query == {"app": ["my app"], "api_key": ["asterisk:p&w=1#x"], "subscribeAll": ["false"]}


# ---- cli ---------------------------------------------------------------------------------


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_environ")
def test_cli_config_error_exits_2_with_a_message_and_no_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--ari-password", "x", "--format", "g729"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "pipecat-bridge: --format must be one of ulaw, alaw, slin, slin16\n"


@pytest.mark.usefixtures("clean_environ")
def test_cli_missing_password_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--audiosocket-listen", "", "--websocket-listen", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipecat-bridge: no ARI password")
    assert "Traceback" not in err


@pytest.mark.usefixtures("clean_environ")
def test_cli_port_range_without_even_port_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--ari-password", "x", "--rtp-ports", "20001-20001"]) == 2
    err = capsys.readouterr().err
    assert err == "pipecat-bridge: port range 20001-20001 holds no even port\n"


# ---- fallback, bot headers ---------------------------------------------------------------


def test_fallback_continue_with_a_context() -> None:
    got = settings("--fallback", "continue", "--fallback-context", "humans")
    assert (got.fallback, got.fallback_context, got.fallback_extension, got.fallback_priority) == (
        "continue",
        "humans",
        "s",
        1,
    )


def test_bot_headers_file_is_parsed(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "# token\nAuthorization: Bearer abc:def\n\nX-Tenant:  acme \n")
    got = settings("--bot-headers-file", str(path))
    assert got.bot_headers == (("Authorization", "Bearer abc:def"), ("X-Tenant", "acme"))


def test_bad_bot_headers_line_is_named_by_number_never_by_text(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "Authorization: Bearer ok\nBearer topsecret\n")
    with pytest.raises(ConfigError) as info:
        settings("--bot-headers-file", str(path))
    assert "line 2" in str(info.value)
    assert "topsecret" not in str(info.value)


def test_world_readable_bot_headers_file_is_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "Authorization: Bearer x\n", 0o644)
    with pytest.raises(ConfigError, match="world-readable"):
        settings("--bot-headers-file", str(path))


def test_caller_silence_fill_can_be_turned_off() -> None:
    assert settings().caller_silence_fill is True
    assert settings("--no-caller-silence-fill").caller_silence_fill is False
    assert settings(BRIDGE_CALLER_SILENCE_FILL="no").caller_silence_fill is False
    assert_config_error("BRIDGE_CALLER_SILENCE_FILL must be one of", BRIDGE_CALLER_SILENCE_FILL="x")


def test_bot_url_credentials_and_an_authorization_header_conflict(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "Authorization: Bearer x\n")
    with pytest.raises(ConfigError, match="keep one"):
        settings("--bot-url", "wss://u:p@bot/ws", "--bot-headers-file", str(path))
