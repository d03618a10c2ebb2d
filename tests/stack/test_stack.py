"""The production topology, for real: supervisord, mongod, redis-server, two Tornado instances
and nginx, started by `todo-stack up` on free loopback ports, exercised through nginx."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import signal
import socket
import ssl
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from bson import ObjectId
from pymongo import MongoClient
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from scripts.local_services import alive, free_port, port_in_use
from scripts.stack import commands
from scripts.stack.config import StackConfig, StackError
from scripts.stack.supervisor import Supervisor
from tests.conftest import Api, error_of, running_stack
from tests.stack.stack_load import Load
from tests.worker.test_import import MULTIPART, csv_file, form


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    """A stack of this module's own: its tests kill and restart what the others rely on."""
    yield from running_stack(tmp_path_factory.mktemp("stack") / "var", "todo_stack_test",
                             rate_limit=20, rate_limit_burst=20)


@pytest.fixture
def api(cfg: StackConfig) -> Iterator[Api]:
    client = Api(cfg.base_url)
    yield client
    client.close()


def instance_pid(cfg: StackConfig, port: int) -> int:
    return int(Supervisor(cfg).ctl("pid", f"todo:todo_{port}").strip())


@pytest.mark.gen_test(timeout=60)
async def test_the_api_works_through_nginx_over_http_and_https(cfg, api):
    token = await api.register("through_nginx")
    created = await api.post("/todo", token=token, body="content=via+nginx",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert created.status == 201
    assert created.headers["Location"] == f"/todo/{created.json['id']}"

    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(HTTPRequest(
            f"https://127.0.0.1:{cfg.https_port}/todo", validate_cert=False,
            headers={"Authorization": f"Bearer {token}"},
        ))
    finally:
        client.close()
    assert [t["content"] for t in json.loads(response.body)["data"]] == ["via nginx"]


def test_https_speaks_http2_and_modern_tls_only(cfg):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (socket.create_connection(("127.0.0.1", cfg.https_port), timeout=5) as raw,
          context.wrap_socket(raw, server_hostname="localhost") as tls):
        assert tls.selected_alpn_protocol() == "h2"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")

    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():  # asking for TLS 1.1 on purpose: nginx must refuse it
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with (socket.create_connection(("127.0.0.1", cfg.https_port), timeout=5) as raw,
          pytest.raises(ssl.SSLError)):
        old.wrap_socket(raw, server_hostname="localhost")


@pytest.mark.gen_test(timeout=60)
async def test_each_request_id_is_echoed_and_reaches_nginx_access_log(cfg, api):
    # The instances log only errors, slow requests and a sample (tests/infra/test_logging.py):
    # nginx's JSON line is the one every request gets, with the id the instance echoed.
    first = await api.get("/healthz")
    second = await api.get("/healthz")
    request_id = first.headers["X-Request-ID"]
    assert len(request_id) == 32
    assert request_id != second.headers["X-Request-ID"]
    access_log = cfg.path("log", "nginx-access.log")
    for _ in range(50):  # nginx flushes its buffered access log every second
        lines = [line for line in access_log.read_text().splitlines() if request_id in line]
        if lines:
            break
        await asyncio.sleep(0.1)
    [entry] = [json.loads(line) for line in lines]
    assert entry["request_id"] == request_id
    assert (entry["uri"], entry["status"], entry["upstream_status"]) == ("/healthz", 200, "200")


def _get_from(address: str, port: int, path: str) -> tuple[int, bytes]:
    """One request from another loopback address (rate limits are per client address)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                            source_address=(address, 0))
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_greedy_client_gets_a_json_429(cfg):
    with ThreadPoolExecutor(max_workers=20) as pool:
        replies = list(pool.map(lambda _: _get_from("127.0.0.2", cfg.http_port, "/healthz"),
                                range(200)))
    statuses = [status for status, _ in replies]
    assert statuses.count(429) > 0
    assert statuses.count(200) >= cfg.rate_limit_burst
    body = json.loads(next(body for status, body in replies if status == 429))
    assert body == {"error": {"status": 429, "message": "too many requests, slow down"}}
    # The exempt local address (load tests, health checks) is never limited.
    with ThreadPoolExecutor(max_workers=20) as pool:
        local = list(pool.map(lambda _: _get_from("127.0.0.1", cfg.http_port, "/healthz"),
                              range(200)))
    assert {status for status, _ in local} == {200}


@pytest.mark.gen_test(timeout=120)
async def test_nginx_refuses_a_body_over_the_limit_with_json_413_but_streams_imports(cfg, api):
    token = await api.register("too_big")
    reply = await api.post("/todo", token=token, json_body={"content": "x" * (70 * 1024)})
    assert error_of(reply) == (413, f"request body is larger than {cfg.max_body_size} bytes")
    listed = await api.get("/todo", token=token)
    assert listed.json["data"] == []
    # The one exception: an import's upload on /jobs, streamed through to an instance.
    data = b"content\n" + b"imported through nginx and streamed\n" * 5000
    assert len(data) > 2 * cfg.max_body_size
    queued = await api.post("/jobs", token=token, body=form(data), headers=MULTIPART)
    assert queued.status == 202, queued.json
    assert queued.json["params"]["size"] == len(data)
    for _ in range(600):
        job = (await api.get(queued.headers["Location"], token=token)).json
        if job["status"] in ("done", "failed"):
            break
        await asyncio.sleep(0.1)
    assert (job["status"], job["result"]["imported"]) == ("done", 5000), job


@pytest.mark.gen_test(timeout=60)
async def test_json_is_gzipped_for_clients_that_accept_it(cfg, api):
    token = await api.register("zipped")
    for i in range(10):
        await api.post("/todo", token=token, json_body={"content": f"compress me please {i}"})
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(HTTPRequest(
            f"{cfg.base_url}/todo", decompress_response=False,
            headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"},
        ))
    finally:
        client.close()
    assert response.headers["Content-Encoding"] == "gzip"
    assert len(json.loads(gzip.decompress(response.body))["data"]) == 10


@pytest.mark.gen_test(timeout=60)
async def test_metrics_stay_off_the_public_listener(cfg, api):
    assert error_of(await api.get("/metrics"))[0] == 404
    direct = Api(f"http://127.0.0.1:{cfg.base_port}")
    try:
        reply = await direct.request("GET", "/metrics")
    finally:
        direct.close()
    assert reply.status == 200


@pytest.mark.gen_test(timeout=120)
async def test_a_killed_instance_loses_no_read_and_no_acknowledged_write(cfg, api):
    token = await api.register("kill_test")
    load = Load(api, token)
    victim = cfg.ports[0]
    old_pid = instance_pid(cfg, victim)
    running = asyncio.ensure_future(load.run(seconds=15))
    await asyncio.sleep(5)
    os.kill(old_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    back_after = await wait_until_back(cfg, victim, old_pid)
    await running

    assert load.failed_reads == [], load.failed_reads[:5]
    assert load.reads > 100
    assert len(load.acknowledged) > 20
    # Failed writes were reported to the client (never a silent loss); retried with the same
    # Idempotency-Key they land, and every write exists exactly once.
    await load.retry_failed_writes()
    assert_exactly_once(cfg, load.acknowledged)
    print(f"\nkill test: {load.reads} reads, {len(load.acknowledged)} writes "
          f"({len(load.failed_writes)} reported failed, then retried); "
          f"instance back after {back_after - killed_at:.2f}s")


async def wait_until_back(cfg: StackConfig, port: int, old_pid: int) -> float:
    """Supervisor restarted the instance (new pid) and it answers /readyz; returns when."""
    direct = Api(f"http://127.0.0.1:{port}")
    try:
        for _ in range(600):
            try:
                if (instance_pid(cfg, port) != old_pid
                        and (await direct.get("/readyz", request_timeout=2)).status == 200):
                    return time.monotonic()
            except (ConnectionError, ValueError, StackError):
                pass
            await asyncio.sleep(0.05)
    finally:
        direct.close()
    raise AssertionError(f"todo_{port} did not come back")


def assert_exactly_once(cfg: StackConfig, writes: dict[str, str]) -> None:
    with MongoClient(cfg.mongo_uri) as client:
        todos = client[cfg.db_name]["todos"]
        counts = {content: todos.count_documents({"content": content}) for content in writes}
    assert {content for content, count in counts.items() if count != 1} == set()


@pytest.mark.gen_test(timeout=180)
async def test_a_rolling_restart_under_load_fails_no_request(cfg, api):
    token = await api.register("rolling")
    load = Load(api, token)
    old_pids = [instance_pid(cfg, port) for port in cfg.ports]
    old_worker = program_pid(cfg, "celery")
    worker_log = cfg.path("log", "celery.log")
    warm_shutdowns = worker_log.read_text().count("worker: Warm shutdown")
    running = asyncio.ensure_future(load.run(seconds=60, until_stopped=True))
    await asyncio.sleep(2)
    await asyncio.to_thread(commands.rolling_restart, cfg)
    # The worker too (new code), after a warm shutdown: its log says so.
    assert program_pid(cfg, "celery") not in (0, old_worker)
    assert worker_log.read_text().count("worker: Warm shutdown") == warm_shutdowns + 1
    await asyncio.sleep(2)
    load.stop()
    await running
    assert [instance_pid(cfg, port) for port in cfg.ports] != old_pids
    assert all(new != old for new, old in zip(
        [instance_pid(cfg, port) for port in cfg.ports], old_pids, strict=True))
    assert load.failed_reads == [], load.failed_reads[:5]
    assert load.failed_writes == {}, list(load.failed_writes)[:5]
    assert load.reads > 100
    assert len(load.acknowledged) > 20
    assert_exactly_once(cfg, load.acknowledged)


@pytest.mark.gen_test(timeout=60)
async def test_sigterm_lets_a_slow_request_finish(cfg, api):
    token = await api.register("slow_one")
    port = cfg.ports[1]
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow_body(write):
        await write(b'{"content": "finished ')
        started.set()
        await release.wait()
        await write(b'despite SIGTERM"}')

    client = AsyncHTTPClient(force_instance=True)
    request = HTTPRequest(
        f"http://127.0.0.1:{port}/todo", method="POST", body_producer=slow_body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    in_flight = asyncio.ensure_future(client.fetch(request, raise_error=False))
    await started.wait()
    supervisor = Supervisor(cfg)
    stopping = asyncio.ensure_future(asyncio.to_thread(supervisor.ctl, "stop", f"todo:todo_{port}"))
    await asyncio.sleep(1)
    release.set()
    response = await in_flight
    await stopping
    client.close()
    assert response.code == 201
    assert json.loads(response.body)["content"] == "finished despite SIGTERM"
    log = cfg.path("log", "supervisord.log").read_text()
    assert f"stopped: todo_{port} (exit status 0)" in log
    await asyncio.to_thread(supervisor.ctl, "start", f"todo:todo_{port}")


@pytest.mark.gen_test(timeout=120)
async def test_a_purge_job_runs_on_the_supervised_worker(cfg, api):
    token = await api.register("purger")
    created = await api.post("/todo", token=token, json_body={"content": "old and done"})
    assert (await api.put(f"/todo/{created.json['id']}/finish", token=token)).status == 200
    kept = await api.post("/todo", token=token, json_body={"content": "still open"})
    queued = await api.post("/jobs", token=token,
                            json_body={"type": "purge", "older_than_days": 0})
    assert queued.status == 202, queued.json
    for _ in range(600):
        job = (await api.get(queued.headers["Location"], token=token)).json
        if job["status"] in ("done", "failed"):
            break
        await asyncio.sleep(0.1)
    assert (job["status"], job["result"]) == ("done", {"deleted": 1}), job
    listed = await api.get("/todo", token=token)
    assert [t["id"] for t in listed.json["data"]] == [kept.json["id"]]


async def wait_for_jobs(api, token, job_ids, *, seconds=120.0):
    """Every job's final record (polling as a client would)."""
    deadline = time.monotonic() + seconds
    final: dict[str, dict] = {}
    while len(final) < len(job_ids):
        for job_id in set(job_ids) - set(final):
            job = (await api.get(f"/jobs/{job_id}", token=token)).json
            if job["status"] in ("done", "failed"):
                final[job_id] = job
        assert time.monotonic() < deadline, f"{len(job_ids) - len(final)} jobs never finished"
        await asyncio.sleep(0.2)
    return final


def program_pid(cfg: StackConfig, program: str) -> int:
    return int(Supervisor(cfg).ctl("pid", program).strip())


@pytest.mark.gen_test(timeout=240)
async def test_queued_jobs_survive_a_kill_9_of_the_queues_redis(cfg, api):
    """Jobs acknowledged with 202 while no worker runs, then the queue's Redis dies without a
    chance to save anything: once it is back (supervisor) and a worker starts, all run."""
    supervisor = Supervisor(cfg)
    token = await api.register("queue_crash")
    await asyncio.to_thread(supervisor.ctl, "stop", "celery")
    try:
        queued = []
        for _ in range(20):
            reply = await api.post("/jobs", token=token,
                                   json_body={"type": "purge", "older_than_days": 1})
            assert reply.status == 202, reply.json
            queued.append(reply.json["id"])
        await kill_the_queues_redis(cfg)
        with redis.Redis.from_url(cfg.broker_url) as broker:
            assert broker.llen("celery") == len(queued)
    finally:
        await asyncio.to_thread(supervisor.ctl, "start", "celery")
    final = await wait_for_jobs(api, token, queued)
    assert {job["status"] for job in final.values()} == {"done"}, final

    # Killed again under a running worker: the instances and the worker reconnect by
    # themselves, and the next job is accepted and run.
    await kill_the_queues_redis(cfg)
    reply = await api.post("/jobs", token=token, json_body={"type": "purge", "older_than_days": 1})
    assert reply.status == 202, reply.json
    final = await wait_for_jobs(api, token, [reply.json["id"]])
    assert final[reply.json["id"]]["status"] == "done"


@pytest.mark.gen_test(timeout=300)
async def test_a_worker_killed_mid_import_finishes_it_once_supervisor_restarts_it(cfg, api):
    """kill -9 the worker while it inserts a 100,000-row import: supervisor starts a new one,
    whose sweeper finds the job's lease run out and queues it again; the second attempt skips
    the rows the first one inserted. Every row ends up imported exactly once."""
    token = await api.register("import_crash")
    count = 100_000
    data = csv_file([[f"row {i}", "false"] for i in range(count)])
    reply = await api.post("/jobs", token=token, body=form(data), headers=MULTIPART,
                           request_timeout=120)
    assert reply.status == 202, reply.json
    job_id = reply.json["id"]
    for _ in range(3000):
        job = (await api.get(f"/jobs/{job_id}", token=token)).json
        if job["status"] == "running" and count // 4 <= job["progress"]["done"] < count:
            break
        assert job["status"] in ("queued", "running"), job
        await asyncio.sleep(0.02)
    else:
        raise AssertionError(f"the import was never seen half-way: {job}")
    old_pid = program_pid(cfg, "celery")
    os.kill(old_pid, signal.SIGKILL)
    killed_at, killed_progress = time.monotonic(), job["progress"]["done"]

    final = (await wait_for_jobs(api, token, [job_id], seconds=240))[job_id]
    assert final["status"] == "done", final
    assert program_pid(cfg, "celery") not in (0, old_pid)
    assert final["result"] == {"imported": count, "duplicates": 0, "rejected": 0, "errors": []}
    with MongoClient(cfg.mongo_uri) as client:
        db = client[cfg.db_name]
        owner = db["users"].find_one({"username": "import_crash"})["_id"]
        assert db["todos"].count_documents({"owner": owner}) == count
        assert len(db["todos"].distinct("content", {"owner": owner})) == count
        assert db["jobs"].find_one({"_id": ObjectId(job_id)})["interruptions"] == 1
    print(f"\nkilled at {killed_progress:,} of {count:,} rows; done "
          f"{time.monotonic() - killed_at:.1f}s after the kill")


async def kill_the_queues_redis(cfg: StackConfig) -> None:
    """kill -9 the job queue's Redis; returns once supervisor has it answering again."""
    old_pid = program_pid(cfg, "broker")
    os.kill(old_pid, signal.SIGKILL)
    with redis.Redis.from_url(cfg.broker_url, socket_timeout=1) as broker:
        for _ in range(300):
            try:
                if program_pid(cfg, "broker") not in (0, old_pid) and broker.ping():
                    return
            except (redis.ConnectionError, ValueError, StackError):
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the queue's Redis did not come back")


@pytest.mark.gen_test(timeout=60)
async def test_a_browser_websocket_through_nginx_hears_a_todo_created_on_any_instance(cfg, api):
    token = await api.register("listener")
    messages: asyncio.Queue[str | bytes | None] = asyncio.Queue()
    origin = f"http://127.0.0.1:{cfg.http_port}"  # as a page served by this host would send
    conn = await websocket_connect(
        HTTPRequest(f"ws://127.0.0.1:{cfg.http_port}/ws?access_token={token}",
                    headers={"Origin": origin}),
        on_message_callback=messages.put_nowait,
    )
    try:
        assert json.loads(await asyncio.wait_for(messages.get(), 30))["type"] == "hello"
        created = await api.post("/todo", token=token, json_body={"content": "heard"})
        heard = json.loads(await asyncio.wait_for(messages.get(), 30))
        assert (heard["type"], heard["action"], heard["todo"]) == ("todo", "created",
                                                                   created.json)
    finally:
        conn.close()
    access_log = cfg.path("log", "nginx-access.log")
    for _ in range(100):  # nginx flushes its buffered access log every second
        if '"uri":"/ws"' in access_log.read_text():
            break
        await asyncio.sleep(0.1)
    assert '"uri":"/ws"' in access_log.read_text()
    assert token not in access_log.read_text()


def test_the_worker_is_supervised_with_a_warm_shutdown(cfg):
    from server.infra.queue import load_celery_config

    conf = cfg.path("run", "supervisord.conf").read_text()
    section = conf.split("[program:celery]")[1].split("\n[")[0]
    settings = dict(line.split(" = ", 1) for line in section.strip().splitlines()
                    if " = " in line and not line.startswith(";"))
    celery = load_celery_config()
    assert "-m celery -A server.worker.main worker" in settings["command"]
    assert "--hostname=todo@%%h" in settings["command"]
    assert settings["stopsignal"] == "TERM"
    assert int(settings["stopwaitsecs"]) > celery.LONGEST_JOB_SECONDS
    assert celery.broker_transport_options["visibility_timeout"] > celery.LONGEST_JOB_SECONDS
    assert f"TODO_BROKER_URL=\"redis://127.0.0.1:{cfg.broker_port}/0\"" in settings["environment"]
    status = Supervisor(cfg).ctl("status", "celery")
    assert "RUNNING" in status, status
    assert "ready." in cfg.path("log", "celery.log").read_text()


def test_up_again_is_harmless_and_a_taken_port_is_named(cfg, capsys):
    commands.up(cfg)
    assert "already running" in capsys.readouterr().out
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = StackConfig(var=str(Path(cfg.var).parent / "other"), instances=1,
                                  http_port=port, https_port=free_port(),
                                  base_port=free_port(), mongo_port=free_port(),
                                  redis_port=free_port(), broker_port=free_port())
        taken_message = f"port {port} \\(nginx HTTP\\) is already in use"
        with pytest.raises(StackError, match=taken_message):
            commands.up(other)


def test_zz_down_leaves_no_process_of_the_stack(cfg):
    pids = Supervisor(cfg).all_pids()
    # mongod, nginx, redis, the queue's redis, two instances, celery, supervisord
    assert len(pids) == 8
    commands.down(cfg)
    assert [pid for pid in pids if alive(pid)] == []
    for port in [cfg.http_port, cfg.https_port, *cfg.ports, cfg.mongo_port, cfg.redis_port,
                 cfg.broker_port]:
        assert not port_in_use(port)
