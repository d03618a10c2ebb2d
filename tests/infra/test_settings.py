"""Settings: command line, then TODO_* environment, then conf file, then defaults.

A bad value is one clear line."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from server.infra.settings import Settings, SettingsError, load_settings

SECRET = "s" * 40


def write_conf(tmp_path: Path, text: str) -> str:
    path = tmp_path / "todo.ini"
    path.write_text(text)
    return str(path)


def test_defaults_apply_when_nothing_is_given(tmp_path):
    settings = load_settings([f"--secret={SECRET}"], env={"TODO_CONF": write_conf(tmp_path, "")})
    assert settings.port == 8001
    assert settings.address == "127.0.0.1"
    assert settings.mongo_uri == "mongodb://127.0.0.1:27017"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.broker_url == "redis://127.0.0.1:6379/1"
    assert settings.result_backend == "redis://127.0.0.1:6379/2"
    assert settings.debug is False


def test_command_line_beats_environment_beats_conf_file(tmp_path):
    conf = write_conf(tmp_path, "[todo]\nport = 8100\ndb_name = from_conf\ncache_ttl = 7\n")
    env = {"TODO_CONF": conf, "TODO_PORT": "8200", "TODO_DB_NAME": "from_env",
           "TODO_SECRET": SECRET}
    settings = load_settings(["--port=8300"], env=env)
    assert (settings.port, settings.db_name, settings.cache_ttl) == (8300, "from_env", 7)


def test_options_take_their_value_after_a_space_or_an_equals_sign(tmp_path):
    env = {"TODO_CONF": write_conf(tmp_path, ""), "TODO_SECRET": SECRET}
    settings = load_settings(["--port", "8002", "--db-name", "spaced", "--debug"], env=env)
    assert (settings.port, settings.db_name, settings.debug) == (8002, "spaced", True)
    with pytest.raises(SettingsError, match="requires a value"):
        load_settings(["--port"], env=env)


def test_dashed_options_and_boolean_flags(tmp_path):
    settings = load_settings(
        ["--mongo-uri=mongodb://db.example:27017", "--debug", f"--secret={SECRET}"],
        env={"TODO_CONF": write_conf(tmp_path, ""), "TODO_XHEADERS": "yes"},
    )
    assert settings.mongo_uri == "mongodb://db.example:27017"
    assert settings.debug is True
    assert settings.xheaders is True


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--port=abc"], {}, "port"),
        (["--port=70000"], {}, "port must be 1-65535"),
        ([], {"TODO_PORT": "eighty"}, "TODO_PORT: port must be int"),
        ([], {"TODO_DEBUG": "perhaps"}, "TODO_DEBUG: debug must be bool"),
        (["--mongo-uri=postgres://x"], {}, "mongo_uri must start with mongodb://"),
        (["--redis-url=http://x"], {}, "redis_url must start with redis://"),
        (["--db-name=bad.name"], {}, "db_name"),
        (["--token-ttl=5"], {}, "token_ttl"),
        (["--secret=short"], {}, "secret must be at least 32 characters"),
        (["--no-such-option=1"], {}, "Unrecognized command line option"),
        (["--debug=perhaps"], {}, "--debug: debug must be bool"),
        (["--mongo-uri=mongodb://127.0.0.1:abc"], {}, "mongo_uri is not a valid MongoDB URI"),
        (["--redis-url=redis://127.0.0.1:abc/0"], {}, "redis_url is not a valid Redis URL"),
        ([], {"TODO_BROKER_URL": "amqp://x"}, "broker_url must start with redis://"),
        ([], {"TODO_BROKER_URL": "sentinel://127.0.0.1:26379;redis://127.0.0.1:6380/0"},
         "every address of a Sentinel URL must start with sentinel://, got 'redis://"),
        (["--result-backend=sentinel://127.0.0.1:x/1"], {},
         "result_backend is not a valid Sentinel URL"),
        ([], {"TODO_BROKER_URL": "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380/1"},
         "broker_url: Celery reads the database from the first Sentinel address only"),
        ([], {"TODO_BROKER_URL": "sentinel://:26379/1"}, "names no host"),
        (["--broker-master-name= "], {}, "broker_master_name must not be empty"),
        ([], {"TODO_JOB_REQUEUE_AFTER": "0.5"}, "job_requeue_after must be at least 1 second"),
        (["--result-backend=redis://127.0.0.1:abc/2"], {},
         "result_backend is not a valid Redis URL"),
        (["--broker-url=redis://127.0.0.1:6379/0"], {},
         "broker_url must be another Redis database than redis_url's"),
        ([], {"TODO_RESULT_BACKEND": "redis://127.0.0.1:6379"},
         "result_backend must be another Redis database than redis_url's"),
        (["--mongo-timeout-ms=2000", "--mongo-op-timeout-ms=1000"], {}, "mongo_op_timeout_ms"),
        ([], {"TODO_MAX_UPLOAD_SIZE": "100"}, "max_upload_size must be at least 1024 bytes"),
    ],
)
def test_a_bad_setting_is_one_clear_line(tmp_path, argv, env, message):
    env = {"TODO_CONF": write_conf(tmp_path, ""), "TODO_SECRET": SECRET, **env}
    if "--secret=short" in argv:
        env.pop("TODO_SECRET")
    with pytest.raises(SettingsError) as raised:
        load_settings(argv, env=env)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("conf_text", "message"),
    [
        ("[todo]\nportt = 1\n", "unknown setting 'portt'"),
        ("not ini at all", "is not valid INI"),
        ("[todo]\ncache_ttl = soon\n", "cache_ttl must be int"),
        ("[Todo]\nport = 8005\n", r"settings belong in a \[todo\] section, found \[Todo\]"),
    ],
)
def test_a_bad_conf_file_is_one_clear_line(tmp_path, conf_text, message):
    with pytest.raises(SettingsError, match=message):
        load_settings([f"--secret={SECRET}"], env={"TODO_CONF": write_conf(tmp_path, conf_text)})


def test_booleans_mean_the_same_from_every_source(tmp_path):
    conf = write_conf(tmp_path, "[todo]\nxheaders = off\n")
    env = {"TODO_CONF": conf, "TODO_SECRET": SECRET}
    assert load_settings(["--debug=no"], env=env).debug is False
    assert load_settings(["--debug=yes"], env=env).debug is True
    assert load_settings([], env={**env, "TODO_DEBUG": "off"}).debug is False
    assert load_settings([], env=env).xheaders is False


def test_a_percent_sign_in_the_conf_file_is_taken_literally(tmp_path):
    conf = write_conf(tmp_path, "[todo]\nredis_prefix = todo%1:\n")
    assert load_settings([], env={"TODO_CONF": conf, "TODO_SECRET": SECRET}).redis_prefix == (
        "todo%1:"
    )


def test_a_missing_conf_file_is_named(tmp_path):
    with pytest.raises(SettingsError, match="cannot read conf file"):
        load_settings([f"--secret={SECRET}", f"--conf={tmp_path / 'nope.ini'}"], env={})


def test_the_secret_is_generated_once_privately_and_reused(tmp_path):
    secret_file = tmp_path / "var" / "secret"
    env = {"TODO_CONF": write_conf(tmp_path, ""), "TODO_SECRET_FILE": str(secret_file)}
    first = load_settings([], env=env)
    second = load_settings([], env=env)
    assert len(first.secret) >= 32
    assert first.secret == second.secret
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600


def test_an_unreadable_secret_file_is_one_clear_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {"TODO_CONF": write_conf(tmp_path, ""), "TODO_SECRET_FILE": str(blocker / "secret")}
    with pytest.raises(SettingsError, match="secret file"):
        load_settings([], env=env)


def test_settings_defaults_match_the_dataclass():
    assert Settings().max_body_size == 64 * 1024
    assert Settings().max_upload_size == 50 * 1024 * 1024


def test_the_upload_limit_comes_from_every_source(tmp_path):
    conf = write_conf(tmp_path, "[todo]\nmax_upload_size = 2048\n")
    assert load_settings([], env={"TODO_CONF": conf, "TODO_SECRET": SECRET}).max_upload_size == 2048
    from_env = load_settings([], env={"TODO_CONF": conf, "TODO_SECRET": SECRET,
                                      "TODO_MAX_UPLOAD_SIZE": "4096"})
    assert from_env.max_upload_size == 4096
    from_argv = load_settings(["--max-upload-size", "8192"],
                              env={"TODO_CONF": conf, "TODO_SECRET": SECRET})
    assert from_argv.max_upload_size == 8192


def test_the_queue_may_be_found_through_its_sentinels(tmp_path):
    """Celery's own form: each Sentinel's address, separated by `;`, the database on the first
    (kombu and Celery read it there); the master's name is a setting of its own."""
    sentinels = "sentinel://127.0.0.1:26379/0;sentinel://127.0.0.1:26380/0"
    env = {"TODO_CONF": write_conf(tmp_path, ""), "TODO_SECRET": SECRET,
           "TODO_BROKER_URL": sentinels, "TODO_RESULT_BACKEND": sentinels.replace("/0", "/1"),
           "TODO_BROKER_MASTER_NAME": "queue-a", "TODO_JOB_REQUEUE_AFTER": "5"}
    settings = load_settings([], env=env)
    assert (settings.broker_url, settings.broker_master_name) == (sentinels, "queue-a")
    assert settings.job_requeue_after == 5.0
    assert load_settings([], env={**env, "TODO_BROKER_MASTER_NAME": ""}).broker_master_name == (
        Settings.broker_master_name
    )
    # The form: the database on the last address only is fine while it is 0.
    last_only = "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380;sentinel://127.0.0.1:26381/0"
    assert load_settings([f"--broker-url={last_only}"], env=env).broker_url == last_only
