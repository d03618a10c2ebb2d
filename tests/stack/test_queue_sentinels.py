"""`todo-stack up --queue-sentinels 3`: the job queue's master, its replica and three Sentinels
under supervisord; the instances and the worker find the master through the Sentinels, and a
master that stays away is replaced without a lost job. (The kill -9 itself, with jobs queued
and running and a message lost, is tests/worker/test_sentinel.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis

from scripts.local_services import alive, port_in_use
from scripts.stack import commands, sentinel
from scripts.stack.config import StackConfig
from scripts.stack.supervisor import Supervisor
from server.infra.settings import Settings
from tests.conftest import Api, consecutive_free_ports, running_stack
from tests.stack.test_stack import wait_for_jobs


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    yield from running_stack(tmp_path_factory.mktemp("sentinels") / "var", "todo_sentinels",
                             instances=1, queue_sentinels=3,
                             broker_port=consecutive_free_ports(2),
                             sentinel_port=consecutive_free_ports(3))


@pytest.fixture
def api(cfg: StackConfig) -> Iterator[Api]:
    client = Api(cfg.base_url)
    yield client
    client.close()


def named_master(cfg: StackConfig) -> int | None:
    master = sentinel.ask_master([("127.0.0.1", port) for port in cfg.sentinel_ports])[0]
    return master[1] if master else None


def role(port: int) -> str:
    with redis.Redis("127.0.0.1", port, socket_timeout=1, decode_responses=True) as client:
        return str(client.role()[0])


def program_settings(cfg: StackConfig, program: str) -> dict[str, str]:
    conf = cfg.path("run", "supervisord.conf").read_text()
    section = conf.split(f"[program:{program}]")[1].split("\n[")[0]
    return dict(line.split(" = ", 1) for line in section.strip().splitlines()
                if " = " in line and not line.startswith(";"))


def test_the_instances_and_the_worker_ask_the_sentinels_for_the_queue(cfg):
    assert sentinel.MASTER_NAME == Settings.broker_master_name == cfg.broker_master_name
    urls = [f"sentinel://127.0.0.1:{port}/0" for port in cfg.sentinel_ports]
    assert cfg.broker_url == ";".join(urls)
    assert cfg.result_backend == ";".join(url.replace("/0", "/1") for url in urls)
    instance = program_settings(cfg, f"todo_{cfg.base_port}")["command"]
    assert f"--broker-url {cfg.broker_url} " in instance
    assert f"--broker-master-name {sentinel.MASTER_NAME} " in instance
    worker = program_settings(cfg, "celery")["environment"]
    assert f'TODO_BROKER_URL="{cfg.broker_url}"' in worker
    assert f'TODO_BROKER_MASTER_NAME="{sentinel.MASTER_NAME}"' in worker
    states = dict(line.split()[:2] for line in Supervisor(cfg).ctl("status").splitlines())
    for program in ("broker", "broker_replica",
                    *[f"sentinels:sentinel_{port}" for port in cfg.sentinel_ports]):
        assert states[program] == "RUNNING", states
    assert named_master(cfg) == cfg.broker_port
    assert (role(cfg.broker_port), role(cfg.broker_replica_port)) == ("master", "slave")
    # `up` returned only once every Sentinel knew the replica: a failover has one to promote.
    assert sentinel.ready_to_fail_over(cfg.sentinel_addresses, 1)


async def export(api: Api, token: str) -> str:
    reply = await api.post("/jobs", token=token, json_body={"type": "export", "format": "json"})
    assert reply.status == 202, reply.json
    return str(reply.json["id"])


@pytest.mark.gen_test(timeout=120)
async def test_a_master_that_stays_away_is_replaced_and_comes_back_as_a_replica(cfg, api):
    supervisor = Supervisor(cfg)
    token = await api.register("failover")
    for n in range(3):
        assert (await api.post("/todo", token=token, json_body={"content": f"t{n}"})).status == 201
    before = [await export(api, token) for _ in range(3)]

    # The master's host is gone (its program stopped): the Sentinels promote the replica.
    stopped_at = time.monotonic()
    await asyncio.to_thread(supervisor.ctl, "stop", "broker")
    while named_master(cfg) != cfg.broker_replica_port:
        assert time.monotonic() - stopped_at < 15, "no replica promoted"
        await asyncio.sleep(0.1)
    assert role(cfg.broker_replica_port) == "master"
    # The instance and the worker find it by themselves.
    after = await export(api, token)
    final = await wait_for_jobs(api, token, [*before, after], seconds=60)
    assert {job["status"] for job in final.values()} == {"done"}, final

    # Started again, the old master asks the Sentinels and follows the new one.
    await asyncio.to_thread(supervisor.ctl, "start", "broker")
    deadline = time.monotonic() + 10
    while role(cfg.broker_port) != "slave":
        assert time.monotonic() < deadline, "the old master never became a replica"
        await asyncio.sleep(0.1)
    assert f"replica of 127.0.0.1 {cfg.broker_replica_port}" in (
        cfg.path("log", "broker.log").read_text())


def test_queue_sentinels_refuse_a_queue_of_ones_own(monkeypatch, capsys):
    with pytest.raises(SystemExit, match="--queue-sentinels must be 0"):
        commands.main(["up", "--queue-sentinels", "2"])
    monkeypatch.setenv("TODO_BROKER_URL", "redis://127.0.0.1:6390/0")
    with pytest.raises(SystemExit, match="TODO_BROKER_URL names a server of yours"):
        commands.main(["up", "--queue-sentinels", "3"])


def test_zz_down_leaves_no_process_of_the_stack(cfg):
    pids = Supervisor(cfg).all_pids()
    # mongod, redis, broker, broker_replica, 3 Sentinels, one instance, celery, nginx,
    # supervisord
    assert len(pids) == 11
    commands.down(cfg)
    assert [pid for pid in pids if alive(pid)] == []
    for port in [cfg.broker_port, cfg.broker_replica_port, *cfg.sentinel_ports]:
        assert not port_in_use(port)
