"""Settings: command-line options first, then `TODO_*` environment variables, then a conf file.

Every option is declared once, with its help text naming its environment variable, and validated
at start-up so that a bad value stops the process with one clear line.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tornado.options import Error as OptionsError
from tornado.options import OptionParser

from server.infra import secret_file
from server.infra.addresses import SENTINEL_SCHEME, AddressError, check_addresses

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONF_FILE = PROJECT_ROOT / "conf" / "todo.ini"
DEFAULT_SECRET_FILE = PROJECT_ROOT / "var" / "secret"
MIN_SECRET_LENGTH = 32


class SettingsError(Exception):
    """A setting is missing or invalid; the message is one line meant for the operator."""


@dataclass(frozen=True)
class Settings:
    port: int = 8001
    address: str = "127.0.0.1"
    mongo_uri: str = "mongodb://127.0.0.1:27017"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Other databases than the cache's: flushing the cache must not drop queued jobs.
    broker_url: str = "redis://127.0.0.1:6379/1"
    result_backend: str = "redis://127.0.0.1:6379/2"
    # With sentinel:// URLs: the name the Sentinels monitor the queue's master under.
    broker_master_name: str = "todo-queue"
    # A queued job not taken after this long is published again (its message may have been
    # lost with a broker's master): server/worker/sweeper.py.
    job_requeue_after: float = 300.0
    db_name: str = "todo"
    secret: str = ""
    secret_file: str = str(DEFAULT_SECRET_FILE)
    debug: bool = False
    token_ttl: int = 86400
    cache_ttl: int = 60
    mongo_timeout_ms: int = 1000
    mongo_op_timeout_ms: int = 10000
    redis_timeout: float = 1.0
    redis_prefix: str = "todo:"
    max_body_size: int = 64 * 1024
    # An import's file (POST /jobs as multipart/form-data): the one route with a large body.
    max_upload_size: int = 50 * 1024 * 1024
    shutdown_timeout: float = 10.0
    slow_request_ms: int = 500
    access_log_sample: float = 0.01
    mongo_pool_size: int = 100
    max_in_flight: int = 1500
    xheaders: bool = False
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    ws_queue_size: int = 256
    ws_max_per_user: int = 20
    ws_origins: str = ""
    instance_name: str = ""  # empty: "<address>:<port>"


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
        raise ValueError(f"expected true or false, got {text!r}")
    return lowered in {"1", "true", "yes", "on"}


_PARSERS: dict[type, Callable[[str], Any]] = {int: int, float: float, str: str, bool: _parse_bool}

# name -> (type, help). The env variable is TODO_<NAME>; the conf key is the name itself.
OPTIONS: dict[str, tuple[type, str]] = {
    "port": (int, "TCP port to listen on (TODO_PORT)"),
    "address": (str, "address to bind; loopback by default (TODO_ADDRESS)"),
    "mongo_uri": (str, "MongoDB connection URI (TODO_MONGO_URI)"),
    "redis_url": (str, "Redis URL for the list cache and token revocations (TODO_REDIS_URL)"),
    "broker_url": (str, "Redis URL of the Celery job queue; another database than redis_url's; "
                        "or its Sentinels, sentinel://host:port/db;sentinel://host:port/db;... "
                        "(TODO_BROKER_URL)"),
    "result_backend": (str, "Redis URL where Celery keeps task results; another database than "
                            "redis_url's; or sentinel:// addresses as for broker_url "
                            "(TODO_RESULT_BACKEND)"),
    "broker_master_name": (str, "the name the Sentinels of sentinel:// broker_url and "
                                "result_backend monitor the queue's master under "
                                "(TODO_BROKER_MASTER_NAME)"),
    "job_requeue_after": (float, "seconds a job may stay queued before workers publish it "
                                 "again, in case its message was lost with the broker "
                                 "(TODO_JOB_REQUEUE_AFTER)"),
    "db_name": (str, "MongoDB database name (TODO_DB_NAME)"),
    "secret": (str, "token signing secret, >= 32 characters; generated into --secret-file "
                    "when absent (TODO_SECRET)"),
    "secret_file": (str, "where the generated secret is kept (TODO_SECRET_FILE)"),
    "debug": (bool, "Tornado debug mode: autoreload and tracebacks in logs (TODO_DEBUG)"),
    "token_ttl": (int, "bearer token lifetime in seconds (TODO_TOKEN_TTL)"),
    "cache_ttl": (int, "first-page cache lifetime in seconds, before jitter (TODO_CACHE_TTL)"),
    "mongo_timeout_ms": (int, "how long to look for a reachable MongoDB (server selection "
                              "and connect) before answering 503, in ms (TODO_MONGO_TIMEOUT_MS)"),
    "mongo_op_timeout_ms": (int, "how long a sent MongoDB operation may wait for its answer "
                                 "(socket timeout), in ms (TODO_MONGO_OP_TIMEOUT_MS)"),
    "redis_timeout": (float, "Redis connect and command timeout in seconds (TODO_REDIS_TIMEOUT)"),
    "redis_prefix": (str, "prefix of every Redis key this service writes (TODO_REDIS_PREFIX)"),
    "max_body_size": (int, "largest accepted request body in bytes (TODO_MAX_BODY_SIZE)"),
    "max_upload_size": (int, "largest accepted import file in bytes, uploaded to POST /jobs as "
                             "multipart/form-data (TODO_MAX_UPLOAD_SIZE)"),
    "shutdown_timeout": (float, "seconds to finish requests on SIGTERM (TODO_SHUTDOWN_TIMEOUT)"),
    "slow_request_ms": (int, "requests slower than this (ms) are logged (TODO_SLOW_REQUEST_MS)"),
    "access_log_sample": (float, "share of other requests logged, 0-1; 5xx always are "
                                 "(TODO_ACCESS_LOG_SAMPLE)"),
    "mongo_pool_size": (int, "MongoDB connections per instance (TODO_MONGO_POOL_SIZE)"),
    "max_in_flight": (int, "requests one instance serves at once; more get 503 + Retry-After "
                           "(TODO_MAX_IN_FLIGHT)"),
    "xheaders": (bool, "trust X-Real-IP / X-Forwarded-* (only behind nginx) (TODO_XHEADERS)"),
    "ws_ping_interval": (float, "seconds between WebSocket pings to each client "
                                "(TODO_WS_PING_INTERVAL)"),
    "ws_ping_timeout": (float, "seconds a client has to answer a ping before its WebSocket is "
                               "closed; at most ws_ping_interval (TODO_WS_PING_TIMEOUT)"),
    "ws_queue_size": (int, "messages a WebSocket may have waiting to be sent; a client that "
                           "falls further behind is disconnected (TODO_WS_QUEUE_SIZE)"),
    "ws_max_per_user": (int, "open WebSockets one user may have on one instance "
                             "(TODO_WS_MAX_PER_USER)"),
    "ws_origins": (str, "comma-separated browser origins allowed to open WebSockets besides "
                        "the API's own; * for any (TODO_WS_ORIGINS)"),
    "instance_name": (str, "unique name of its edge lease; <address>:<port> (TODO_INSTANCE_NAME)"),
}


def _joined_values(argv: Sequence[str]) -> list[str]:
    """Accept `--port 8001` as well as tornado's own `--port=8001`."""
    joined: list[str] = []
    pending: str | None = None
    for arg in argv:
        if pending is not None:
            joined.append(f"{pending}={arg}")
            pending = None
            continue
        name = arg.lstrip("-").partition("=")[0].replace("-", "_")
        is_flag = name in OPTIONS and OPTIONS[name][0] is bool
        if not arg.startswith("--") or "=" in arg or name not in (*OPTIONS, "conf"):
            joined.append(arg)
        elif is_flag:
            joined.append(f"{arg}=true")  # a bare --debug switches it on
        else:
            pending = arg
    if pending is not None:
        joined.append(pending)  # tornado reports the missing value
    return joined


def _command_line(argv: Sequence[str]) -> tuple[dict[str, Any], str | None]:
    """Parse argv into the options given explicitly (absent ones stay out of the result)."""
    parser = OptionParser()
    for name, (kind, help_text) in OPTIONS.items():
        # Booleans are parsed by _parse_bool (tornado reads "--debug=no" as true).
        parser.define(name, type=str if kind is bool else kind, default=None, help=help_text)
    parser.define("conf", type=str, default=None,
                  help="INI conf file with a [todo] section (TODO_CONF; default "
                       f"{DEFAULT_CONF_FILE} when it exists)")
    for arg in _joined_values(argv):  # one at a time, so an error names the argument at fault
        try:
            rest = parser.parse_command_line(["todo-server", arg], final=False)
        except OptionsError as exc:
            raise SettingsError(str(exc)) from None
        except ValueError:
            raise SettingsError(f"{arg}: value of the wrong type") from None
        if rest:
            raise SettingsError(f"unexpected argument {arg!r}; options look like --port=8001")
    given = {
        name: _convert(name, value, f"--{name.replace('_', '-')}") if OPTIONS[name][0] is bool
        else value
        for name, value in parser.as_dict().items()
        if name in OPTIONS and value is not None
    }
    return given, parser.as_dict()["conf"]


def _conf_file(path: str | None, env: Mapping[str, str]) -> dict[str, str]:
    chosen = path or env.get("TODO_CONF")
    if chosen is None:
        if not DEFAULT_CONF_FILE.exists():
            return {}
        chosen = str(DEFAULT_CONF_FILE)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(chosen, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise SettingsError(f"cannot read conf file {chosen}: {exc.strerror}") from None
    except configparser.Error as exc:
        raise SettingsError(f"conf file {chosen} is not valid INI: {exc.message}") from None
    if not parser.has_section("todo"):
        if parser.sections():
            raise SettingsError(f"conf file {chosen}: settings belong in a [todo] section, "
                                f"found [{parser.sections()[0]}]")
        return {}
    values = dict(parser.items("todo"))
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        raise SettingsError(f"conf file {chosen}: unknown setting {unknown[0]!r}")
    return values


def _convert(name: str, raw: str, source: str) -> Any:
    kind = OPTIONS[name][0]
    try:
        return _PARSERS[kind](raw)
    except ValueError:
        raise SettingsError(f"{source}: {name} must be {kind.__name__}, got {raw!r}") from None


def _validate(values: dict[str, Any]) -> None:
    checks: list[tuple[bool, str]] = [
        (1 <= values["port"] <= 65535, f"port must be 1-65535, got {values['port']}"),
        (values["mongo_uri"].startswith(("mongodb://", "mongodb+srv://")),
         "mongo_uri must start with mongodb:// or mongodb+srv://"),
        (values["redis_url"].startswith(("redis://", "rediss://", "unix://")),
         "redis_url must start with redis://, rediss:// or unix://"),
        *[(values[name].startswith(("redis://", "rediss://", "unix://", SENTINEL_SCHEME)),
           f"{name} must start with redis://, rediss://, unix:// or sentinel://")
          for name in ("broker_url", "result_backend")],
        (bool(values["broker_master_name"].strip()), "broker_master_name must not be empty"),
        (values["job_requeue_after"] >= 1, "job_requeue_after must be at least 1 second"),
        (bool(values["db_name"]) and not set(values["db_name"]) & set('/\\. "$'),
         f"db_name {values['db_name']!r} is not a valid MongoDB database name"),
        (values["token_ttl"] >= 60, "token_ttl must be at least 60 seconds"),
        (values["cache_ttl"] >= 1, "cache_ttl must be at least 1 second"),
        (values["mongo_timeout_ms"] >= 100, "mongo_timeout_ms must be at least 100"),
        (values["mongo_op_timeout_ms"] >= values["mongo_timeout_ms"],
         "mongo_op_timeout_ms must be at least mongo_timeout_ms"),
        (values["redis_timeout"] > 0, "redis_timeout must be positive"),
        (values["max_body_size"] >= 1024, "max_body_size must be at least 1024 bytes"),
        (values["max_upload_size"] >= 1024, "max_upload_size must be at least 1024 bytes"),
        (values["shutdown_timeout"] >= 0, "shutdown_timeout must not be negative"),
        (values["slow_request_ms"] >= 1, "slow_request_ms must be at least 1"),
        (0 <= values["access_log_sample"] <= 1, "access_log_sample must be between 0 and 1"),
        (values["mongo_pool_size"] >= 1, "mongo_pool_size must be at least 1"),
        (values["max_in_flight"] >= 1, "max_in_flight must be at least 1"),
        (values["ws_ping_interval"] > 0, "ws_ping_interval must be positive"),
        (0 < values["ws_ping_timeout"] <= values["ws_ping_interval"],
         "ws_ping_timeout must be positive and at most ws_ping_interval"),
        (values["ws_queue_size"] >= 1, "ws_queue_size must be at least 1"),
        (values["ws_max_per_user"] >= 1, "ws_max_per_user must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise SettingsError(message)
    try:
        check_addresses(values)
    except AddressError as exc:
        raise SettingsError(str(exc)) from None


def load_or_create_secret(path: Path) -> str:
    """Read the signing secret kept in `path`, creating it (mode 0600) on first run."""
    try:
        return secret_file.load_or_create_secret(path)
    except secret_file.SecretFileError as exc:
        raise SettingsError(str(exc)) from None


def load_settings(argv: Sequence[str] = (), env: Mapping[str, str] | None = None) -> Settings:
    """Resolve every setting from argv, then env, then the conf file, then the defaults."""
    env = os.environ if env is None else env
    given, conf_path = _command_line(argv)
    conf = _conf_file(conf_path, env)
    values: dict[str, Any] = {}
    for name in OPTIONS:
        env_name = f"TODO_{name.upper()}"
        if name in given:
            values[name] = given[name]
        elif env.get(env_name, "") != "":
            values[name] = _convert(name, env[env_name], env_name)
        elif name in conf:
            values[name] = _convert(name, conf[name], "conf file")
        else:
            values[name] = getattr(Settings, name)
    _validate(values)
    if not values["secret"]:
        values["secret"] = load_or_create_secret(Path(values["secret_file"]))
    if len(values["secret"]) < MIN_SECRET_LENGTH:
        raise SettingsError(f"secret must be at least {MIN_SECRET_LENGTH} characters long")
    values["instance_name"] = values["instance_name"] or f"{values['address']}:{values['port']}"
    return Settings(**values)
