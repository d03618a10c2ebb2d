"""The stack across network-namespace hosts (scripts/lab), brought up once for this module.

Every request here is made from the lab's client host: its sockets are created on a thread
that has entered that namespace (scripts/netlab/netns.py), never in the root namespace, which
has no route to the lab's subnet but its default one. Needs root and `ip netns`; skipped
otherwise. The lab is named `labtest` on 10.211.1.0/24, so it never meets a `scripts/lab up`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.client import HTTPException
from pathlib import Path
from typing import Any

import pytest

from scripts.local_services import alive
from scripts.netlab import commands, netns
from scripts.netlab.topology import Lab
from scripts.stack.config import StackError
from tests.worker.test_import import MULTIPART, csv_file, form

REASON = netns.can_build()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no lab here: {REASON}")

NAME, SUBNET = "labtest", "10.211.1.0/24"


def root_links() -> str:
    return subprocess.run(["ip", "-br", "link"], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture(scope="module")
def links_before() -> str:
    """The root namespace's links before the lab: the same after it, and meanwhile."""
    return root_links()


@pytest.fixture(scope="module")
def lab(links_before: str) -> Iterator[Lab]:
    # Outside pytest's 0700 temporary folders: nginx's unprivileged workers read the web app.
    var = Path(tempfile.mkdtemp(prefix="todo-lab-"))
    var.chmod(0o755)
    lab = Lab(name=NAME, subnet=SUBNET, var=str(var))
    # What a test run killed midway left behind (only these tests make `labtest-` namespaces).
    netns.remove(Lab(name=NAME, subnet=SUBNET, var=str(var),
                     created_netns=[name for name in lab.netns if netns.exists(name)]))
    commands.up(lab)
    yield lab
    if commands.is_up(lab):
        commands.down(lab)
    shutil.rmtree(var, ignore_errors=True)


class Client:
    """HTTP/1.1 keep-alive to the edge host, from the client host."""

    def __init__(self, lab: Lab, timeout: float = 30.0) -> None:
        self.lab = lab
        self.connection = netns.NetnsHTTPConnection(
            lab.host("client").netns, lab.host("edge").address, 80, timeout)

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON or bytes); a `bytes` body goes as it is, anything else as
        JSON."""
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, bytes) else None
        if body is not None and data is None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        try:
            self.connection.request(method, path, body=data, headers=sent)
            response = self.connection.getresponse()
            raw = response.read()
        except (OSError, HTTPException) as exc:
            self.connection.close()  # the next request opens a new connection
            raise OSError(f"{method} {path}: {exc!r}") from exc
        reply_headers = {k.lower(): v for k, v in response.getheaders()}
        parsed = json.loads(raw) if raw and "json" in reply_headers.get("content-type", "") \
            else raw
        return response.status, reply_headers, parsed

    def register(self, name: str) -> str:
        user = {"username": f"{name}_{uuid.uuid4().hex[:8]}", "password": "correct horse"}
        assert self.request("POST", "/users", user)[0] == 201
        status, _, body = self.request("POST", "/tokens", user)
        assert status == 201
        return str(body["token"])

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def client(lab: Lab) -> Iterator[Client]:
    client = Client(lab)
    yield client
    client.close()


def access_log_line(lab: Lab, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The edge's access-log line of one request (nginx flushes its log buffer every second)."""
    log = lab.path("edge", "log", "nginx-access.log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if entry["request_id"] == request_id:
                return dict(entry)
        time.sleep(0.2)
    raise AssertionError(f"request {request_id} is not in {log}")


# -- containment ----------------------------------------------------------------------------
def test_the_lab_is_contained(lab, links_before):
    assert netns.containment_problems(lab) == []
    root_addresses = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True,
                                    check=True).stdout
    lab_links = {lab.bridge, *(host.switch_port for host in lab.hosts.values())}
    for host in lab.hosts.values():
        assert f" {host.address}/" not in root_addresses
        # The root namespace knows no way into the lab (only its default route, which no
        # process of ours ever sends a lab address to).
        route = subprocess.run(["ip", "route", "get", host.address], capture_output=True,
                               text=True, check=False).stdout.split()
        assert not lab_links & set(route), route
        assert netns.ip("route", "show", "default", netns=host.netns).strip() == ""
        assert netns.ip("-6", "addr", "show", netns=host.netns).strip() == ""
    assert netns.ip("route", "show", "default", netns=lab.switch).strip() == ""
    # Nothing of the lab is in the root namespace: its links live in the switch.
    assert {link.split()[0].split("@")[0] for link in root_links().splitlines()} == {
        link.split()[0].split("@")[0] for link in links_before.splitlines()}
    # Nothing in the lab reaches out of it: no route to any other address.
    unreachable = netns.ip("route", "get", "192.0.2.1", netns=lab.host("client").netns,
                           check=False)
    assert unreachable == ""


def test_every_process_runs_in_its_host_and_binds_its_address(lab):
    assert commands.stray_listeners(lab) == []
    listening = commands.listeners(lab)
    assert listening["edge"] == [f"{lab.host('edge').address}:443",
                                 f"{lab.host('edge').address}:80"]
    assert listening["app1"] == [f"{lab.host('app1').address}:8001"]
    assert listening["db2"] == [f"{lab.host('db2').address}:27017"]
    for name in ("cache", "queue1", "queue2"):
        assert listening[name] == sorted(f"{lab.host(name).address}:{port}"
                                         for port in ("26379", "6379"))
    for name in ("app1", "db1", "edge", "queue1"):
        host_ns = os.stat(netns.NETNS_DIR / lab.host(name).netns).st_ino
        pids = netns.pids(lab.host(name).netns)
        assert pids
        assert {os.stat(f"/proc/{pid}/ns/net").st_ino for pid in pids} == {host_ns}


def test_up_again_reports_the_lab_and_a_used_subnet_is_refused(lab, capsys):
    commands.up(Lab(name=NAME, subnet=SUBNET, var=lab.var))
    assert "the lab is already up" in capsys.readouterr().out
    routes = [line.split()[0] for line in netns.ip("-4", "route").splitlines()
              if line.split()[0] != "default"]
    private = [route for route in routes if ipaddress.ip_network(route).is_private]
    if not private:
        pytest.skip("the root namespace has no route to a private subnet to try")
    taken = Lab(name="labtaken", subnet=private[0], var=lab.var)
    with pytest.raises(StackError, match="is in use on this machine"):
        netns.check_subnet_unused(taken)


# -- the API through the edge host ------------------------------------------------------------
def test_the_api_through_the_edge_host(lab, client):
    token = client.register("lab_api")
    status, headers, todo = client.request("POST", "/todo", {"content": "from the client host"},
                                           token)
    assert status == 201
    assert headers["location"].endswith(f"/todo/{todo['id']}")
    status, _, page = client.request("GET", "/todo?limit=5", token=token)
    assert status == 200
    assert [item["content"] for item in page["data"]] == ["from the client host"]
    assert client.request("GET", f"/todo/{todo['id']}", token=token)[2] == todo

    # The first page: the edge answers it from the cache host once cached.
    upstreams = []
    for _ in range(20):
        status, headers, page = client.request("GET", "/todo", token=token)
        assert status == 200
        assert page["data"][0]["id"] == todo["id"]
        upstreams.append(access_log_line(lab, headers["x-request-id"])["upstream"])
        if lab.stack_config("edge").edge and upstreams[-1] == "":
            break
        time.sleep(0.2)
    assert set(upstreams) <= {"", *lab.instances()}
    if lab.stack_config("edge").edge:
        assert upstreams[-1] == "", f"the edge never answered: {upstreams}"

    # A job: queued on the queue host, run by a worker on one of the app hosts.
    status, _, job = client.request("POST", "/jobs", {"type": "export", "format": "json"}, token)
    assert status == 202
    deadline = time.monotonic() + 30
    while job["status"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.3)
        job = client.request("GET", f"/jobs/{job['id']}", token=token)[2]
    assert job["status"] == "done", job
    status, _, exported = client.request("GET", job["result_url"], token=token)
    assert status == 200
    text = exported.decode() if isinstance(exported, bytes) else json.dumps(exported)
    assert "from the client host" in text


# The contract tests that say most about a stack across hosts: tokens checked and revoked on
# every instance, read-your-writes through the edge and the cache, idempotent creates racing on
# two hosts. The rest (tests/api, bad input among them) runs the same way on demand:
#   TODO_TEST_LAB_VAR=var/lab scripts/lab client -- .venv/bin/python -m pytest tests/api
CONTRACT_FILES = ("test_accounts.py", "test_todos.py", "test_cache.py", "test_idempotency.py")


def test_the_api_contract_tests_pass_through_the_edge_host(lab):
    """pytest itself runs on the client host, its only route the lab's edge host."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TODO_TEST_LAB_VAR": lab.var}
    for name in ("COV_CORE_SOURCE", "COV_CORE_CONFIG", "COV_CORE_DATAFILE"):
        env.pop(name, None)  # the inner run measures nothing of ours
    result = subprocess.run(
        netns.exec_in(lab.host("client").netns, sys.executable, "-m", "pytest", "-q",
                      "-p", "no:cacheprovider", "-n", "0", "-m", "contract",
                      *(f"tests/api/{name}" for name in CONTRACT_FILES)),
        cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in summary, summary
    assert "skipped" not in summary, summary
    print(f"\nthrough the lab's edge host: {summary}")


# -- the benchmark from the client host --------------------------------------------------------
def test_the_benchmark_runs_from_the_client_host_and_leaves_nothing(lab, tmp_path):
    """scripts/lab bench's plumbing, one row for one second: its process on the client host,
    the floor's processes on the app hosts behind the edge host's nginx, gone afterwards."""
    if shutil.which("wrk") is None:
        pytest.skip("no wrk")
    output = tmp_path / "lab.md"
    options = ["--todos", "20", "--runs", "1", "--duration", "1", "--connections", "4",
               "--only", "floor", "--output", str(output)]
    result = subprocess.run(commands.bench_command(lab, options), capture_output=True,
                            text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    text = output.read_text()
    floor = next(line for line in text.splitlines() if line.startswith("| floor: "))
    cells = [cell.strip() for cell in floor.strip("|").split("|")]
    answered, errors, non_2xx = cells[6:9]
    assert (answered != "0", errors, non_2xx) == (True, "0/0/0/0", "0"), floor
    for name in ("app1", "app2"):
        assert f"| {name} todo_8001 |" in text, text
    assert not list(lab.path("edge", "nginx.d").rglob("*.conf"))
    listening = commands.listeners(lab)
    for name in ("app1", "app2"):
        assert listening[name] == [f"{lab.host(name).address}:8001"], listening
    assert netns.containment_problems(lab) == []


class ClientThreads:
    """Threads of the client host running `work` until the block they serve ends."""

    join_seconds = 60.0

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> ClientThreads:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=self.join_seconds)


# -- an app host cut off ----------------------------------------------------------------------
class Readers(ClientThreads):
    """Threads reading through the edge host until stopped; every answer is remembered."""

    def __init__(self, lab: Lab, token: str, paths: list[str], count: int = 4) -> None:
        self.lab, self.token, self.paths = lab, token, paths
        self.answers: list[tuple[float, int, float, str]] = []  # (when, status, secs, upstream)
        self.failures: list[str] = []
        super().__init__()
        self.threads = [threading.Thread(target=self._read, args=(n,)) for n in range(count)]

    def _read(self, number: int) -> None:
        client = Client(self.lab)
        sent = 0
        while not self.stop.is_set():
            path = self.paths[(number + sent) % len(self.paths)]
            sent += 1
            started = time.monotonic()
            try:
                status, headers, _ = client.request("GET", path, token=self.token)
            except OSError as exc:
                self.failures.append(f"GET {path}: {exc!r}")
                continue
            self.answers.append((started, status, time.monotonic() - started,
                                 headers.get("x-request-id", "")))
            if status != 200:
                self.failures.append(f"GET {path}: {status}")
            time.sleep(0.01)
        client.close()


def set_link(lab: Lab, host: str, state: str) -> None:
    netns.ip("link", "set", lab.host(host).switch_port, state, netns=lab.switch)


def test_cutting_an_app_host_loses_no_read(lab, client):
    token = client.register("lab_cut")
    ids = [client.request("POST", "/todo", {"content": f"cut {n}"}, token)[2]["id"]
           for n in range(3)]
    # Reads that reach the instances (the edge answers only the default first page).
    paths = [f"/todo/{todo_id}" for todo_id in ids] + ["/todo?limit=2"]
    app1, app2 = (f"{lab.host(name).address}:8001" for name in ("app1", "app2"))
    with Readers(lab, token, paths) as readers:
        time.sleep(1.5)
        cut_at = time.monotonic()
        set_link(lab, "app1", "down")
        try:
            time.sleep(8)
        finally:
            set_link(lab, "app1", "up")
            restored_at = time.monotonic()
        time.sleep(1)
    assert readers.failures == []
    slowest = max(seconds for _, _, seconds, _ in readers.answers)
    # A read stuck on the cut host goes to the other one within nginx's retry: at worst the
    # edge's read timeout (5 s) on a connection it kept open to the cut host.
    assert slowest < 8, slowest
    late = [request_id for started, _, seconds, request_id in readers.answers
            if started > cut_at + 5 and started + seconds < restored_at]
    assert len(late) > 10, "few reads late in the cut"
    upstreams = {access_log_line(lab, request_id)["upstream"] for request_id in late}
    # Answered by app2, after at most a try of app1 (nginx tries it again each second).
    assert {upstream.rsplit(", ", 1)[-1] for upstream in upstreams} == {app2}, upstreams
    print(f"\n{len(readers.answers)} reads, none lost; the slowest {slowest:.2f}s while "
          f"{app1} was cut")

    # Back on the network, app1 gets reads again.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status, headers, _ = client.request("GET", paths[0], token=token)
        assert status == 200
        if access_log_line(lab, headers["x-request-id"])["upstream"] == app1:
            break
    else:
        raise AssertionError(f"{app1} got no read within 15 s of its link coming back")


# -- the primary cut off ----------------------------------------------------------------------
class Writers(ClientThreads):
    """Threads creating todos through the edge host, each retried with its Idempotency-Key
    until it is acknowledged (201), as a careful client does."""

    join_seconds = 90.0

    def __init__(self, lab: Lab, token: str, count: int = 3) -> None:
        self.lab, self.token = lab, token
        self.acknowledged: dict[str, str] = {}  # content -> id
        self.attempts: list[tuple[float, int | str]] = []  # (when it ended, status)
        self.given_up: list[str] = []
        super().__init__()
        self.threads = [threading.Thread(target=self._write) for _ in range(count)]

    def _write(self) -> None:
        client = Client(self.lab, timeout=30)
        while not self.stop.is_set():
            content, key = f"write {uuid.uuid4().hex}", uuid.uuid4().hex
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                try:
                    status, _, body = client.request("POST", "/todo", {"content": content},
                                                     self.token, {"Idempotency-Key": key})
                except OSError as exc:
                    status, body = repr(exc), None
                self.attempts.append((time.monotonic(), status))
                if status == 201:
                    self.acknowledged[content] = body["id"]
                    break
                time.sleep(0.3)
            else:
                self.given_up.append(content)
            time.sleep(0.02)
        client.close()


def members(lab: Lab) -> dict[str, str]:
    """Each replica-set member's host name -> its state, asked from the client host."""
    by_address = {f"{host.address}:27017": name for name, host in lab.hosts.items()}
    answers = commands.run_inside(lab, "members", 10.0)
    return {by_address[part.split()[1]]: answer.split()[0] for part, answer in answers.items()}


def until_members(lab: Lab, wanted: Callable[[dict[str, str]], bool], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        states = members(lab)
        if wanted(states) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def test_a_primary_cut_off_loses_no_acknowledged_write(lab, client):
    states = until_members(lab, lambda s: "PRIMARY" in s.values(), 30)
    old = next(name for name, state in states.items() if state == "PRIMARY")
    token = client.register("lab_primary")
    with Writers(lab, token) as writers:
        time.sleep(2)
        cut_at = time.monotonic()
        set_link(lab, old, "down")
        try:
            # A new primary on the majority side (the cut host cannot be asked meanwhile).
            states = until_members(lab, lambda s: "PRIMARY" in (s.get(n) for n in s if n != old),
                                   30)
            elected = time.monotonic() - cut_at  # within the polling's ~1 s
            time.sleep(4)
        finally:
            set_link(lab, old, "up")
        # The old primary rejoins as a secondary (rolling back what no majority acknowledged).
        states = until_members(lab, lambda s: s.get(old) == "SECONDARY", 60)
        time.sleep(2)
    assert states.get(old) == "SECONDARY", states
    assert writers.given_up == []
    failed_after_cut = [when for when, status in writers.attempts
                        if status != 201 and when > cut_at]
    resumed = max(failed_after_cut, default=cut_at) - cut_at
    # Every acknowledged write is there, once.
    for content, todo_id in writers.acknowledged.items():
        status, _, todo = client.request("GET", f"/todo/{todo_id}", token=token)
        assert (status, todo["content"]) == (200, content)
    contents = every_content(lab, client, token)
    assert sorted(contents) == sorted(writers.acknowledged)
    print(f"\n{len(writers.acknowledged)} writes acknowledged, none lost or doubled; new "
          f"primary seen {elected:.1f}s after {old} was cut, the last failed attempt "
          f"{resumed:.1f}s after it")


# -- a worker host cut off mid-import ----------------------------------------------------------
def celery_log_sizes(lab: Lab) -> dict[str, int]:
    return {name: lab.path(name, "log", "celery.log").stat().st_size for name in ("app1", "app2")}


def worker_host_of_new_task(lab: Lab, before: dict[str, int], timeout: float = 20) -> str:
    """The app host whose worker received a task since `before` (its celery.log's sizes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, size in before.items():
            with open(lab.path(name, "log", "celery.log"), "rb") as log:
                log.seek(size)
                if b" received" in log.read():
                    return name
        time.sleep(0.1)
    raise AssertionError("no worker received the job")


def test_a_worker_host_cut_mid_import_finishes_it_on_the_other_once(lab, client):
    """The worker's lease in the job's record runs out (30 s) while its host is cut off; the
    other host's sweeper queues the job again and its worker skips the rows already in."""
    token = client.register("lab_import")
    count = 30_000
    data = csv_file([[f"row {i}", "false"] for i in range(count)])
    sizes = celery_log_sizes(lab)
    status, _, job = client.request("POST", "/jobs", form(data), token, MULTIPART)
    assert status == 202, job
    worker = worker_host_of_new_task(lab, sizes)
    deadline = time.monotonic() + 60
    while not (job["status"] == "running" and 0 < job["progress"]["done"] < count):
        assert job["status"] in ("queued", "running"), job
        assert time.monotonic() < deadline, f"the import was never seen half-way: {job}"
        time.sleep(0.02)
        job = client.request("GET", f"/jobs/{job['id']}", token=token)[2]
    cut_at, cut_progress = time.monotonic(), job["progress"]["done"]
    set_link(lab, worker, "down")
    try:
        deadline = time.monotonic() + 100
        while job["status"] != "done" and time.monotonic() < deadline:
            assert job["status"] in ("queued", "running"), job
            time.sleep(0.5)
            job = client.request("GET", f"/jobs/{job['id']}", token=token)[2]
        done_after = time.monotonic() - cut_at
    finally:
        set_link(lab, worker, "up")
    assert job["status"] == "done", job
    assert job["result"]["imported"] + job["result"]["duplicates"] == count, job["result"]
    # Back on the network, the first attempt finds the job no longer its own and stops. Its
    # instances answer 503 until their MongoDB client has found the servers again (a read that
    # nginx sends there meanwhile is answered 503: docs/lab.md); every read after that is a 200.
    back_at = time.monotonic()
    for instance in lab.instances():
        if instance.startswith(lab.host(worker).address + ":"):
            address, port = instance.split(":")
            commands.wait_ready(lab, address, int(port), timeout=30)
    ready_after = time.monotonic() - back_at
    contents = every_content(lab, client, token)
    assert len(contents) == len(set(contents)) == count
    print(f"\n{worker} cut at {cut_progress:,} of {count:,} rows; the import done on the other "
          f"host {done_after:.1f}s after the cut; its instances ready {ready_after:.1f}s after "
          "its link came back")


# -- the job queue's master cut off ------------------------------------------------------------
def queue_report(lab: Lab) -> dict[str, str]:
    """The queue's master as the Sentinels name it, and each node's role, from the client host."""
    return commands.run_inside(lab, "queue", 10.0)


def switch_master_at(lab: Lab, hosts: list[str]) -> float:
    """When (wall clock) the first of these hosts' Sentinels logged the new master."""
    times = []
    for name in hosts:
        for line in lab.path(name, "log", "sentinel_26379.log").read_text().splitlines():
            if "+switch-master" in line:  # "pid:X 01 Dec 2026 11:45:21.465 # +switch-master"
                stamp = " ".join(line.split()[1:5])
                times.append(time.mktime(time.strptime(stamp.split(".")[0],
                                                       "%d %b %Y %H:%M:%S"))
                             + float("0." + stamp.split(".")[1]))
    assert times, f"no Sentinel of {hosts} switched the master"
    return max(times)


def imported_counts(lab: Lab) -> dict[str, int]:
    """Job id -> how many times a worker of either app host imported it."""
    counts: dict[str, int] = {}
    for name in ("app1", "app2"):
        for line in lab.path(name, "log", "celery.log").read_text().splitlines():
            if ": imported " in line and "] job " in line:
                job_id = line.split("] job ", 1)[1].split(":", 1)[0]
                counts[job_id] = counts.get(job_id, 0) + 1
    return counts


def test_the_queue_master_cut_off_fails_over_and_every_accepted_job_runs_once(lab, client):
    """The Sentinels on the two other hosts promote the replica; the instances and workers
    find it by themselves; every job answered 202 runs once; the old master comes back as a
    replica. A POST refused meanwhile is a 503 in time, never the edge's 504, and its job
    never runs."""
    report = commands.wait_queue_ready(lab, 30)
    by_address = {f"{host.address}:6379": name for name, host in lab.hosts.items()}
    old = by_address[report["queue master"].split()[0]]
    new = next(name for name in ("queue1", "queue2") if name != old)
    token = client.register("lab_queue")
    rows: dict[str, list[str]] = {}  # job id -> its rows' contents

    def submit(tag: str, count: int) -> tuple[int | str, str | None]:
        contents = [f"{tag} row {i}" for i in range(count)]
        try:
            status, _, job = client.request("POST", "/jobs", form(csv_file(
                [[content, "false"] for content in contents])), token, MULTIPART)
        except OSError as exc:
            return repr(exc), None
        job_id = job["id"] if status == 202 else None
        if job_id:
            rows[job_id] = contents
        return status, job_id

    accepted = [submit(f"before {k}", 5000)[1] for k in range(6)]
    assert all(accepted)
    deadline = time.monotonic() + 30
    while client.request("GET", f"/jobs/{accepted[0]}", token=token)[2]["status"] == "queued":
        assert time.monotonic() < deadline, "no job started"
        time.sleep(0.05)
    states = [client.request("GET", f"/jobs/{job_id}", token=token)[2]["status"]
              for job_id in accepted]
    assert {"running", "queued"} <= set(states), states

    cut_at, cut_wall = time.monotonic(), time.time()
    set_link(lab, old, "down")
    answers: list[tuple[float, int | str]] = []
    try:
        # Jobs keep coming: refused (503) until an instance finds the new master.
        while sum(status == 202 for _, status in answers) < 3:
            assert time.monotonic() - cut_at < 40, f"no instance found a new master: {answers}"
            status, _ = submit(f"during {len(answers)}", 200)
            answers.append((time.monotonic() - cut_at, status))
            time.sleep(0.3)
        assert {status for _, status in answers} <= {202, 503}, answers
        report = queue_report(lab)
        promoted = switch_master_at(lab, [new, "cache"]) - cut_wall
        assert report["queue master"].startswith(f"{lab.host(new).address}:6379 (named by 2"), \
            report
        assert report[f"queue node {lab.host(new).address}:6379"] == "master", report
        # Every job answered 202 runs, on the workers that found the new master by themselves.
        for job_id in rows:
            while (job := client.request("GET", f"/jobs/{job_id}", token=token)[2])["status"] \
                    in ("queued", "running"):
                assert time.monotonic() - cut_at < 60, f"not done 60 s after the cut: {job}"
                time.sleep(0.3)
            assert job["status"] == "done", job
            assert job["result"]["imported"] + job["result"]["duplicates"] == len(rows[job_id])
        all_done = time.monotonic() - cut_at
    finally:
        set_link(lab, old, "up")
        restored_at = time.monotonic()

    # The old master rejoins as the new master's replica: never a second master.
    deadline = time.monotonic() + 30
    while f"replica of {lab.host(new).address}:6379 (connected)" != (
            report := queue_report(lab))[f"queue node {lab.host(old).address}:6379"]:
        assert time.monotonic() < deadline, f"{old} not a replica 30 s after: {report}"
        time.sleep(0.5)
    rejoined = time.monotonic() - restored_at
    assert report["queue master"].startswith(f"{lab.host(new).address}:6379 (named by 3 of 3")
    assert list(report.values()).count("master") == 1, report
    status, job_id = submit("after", 100)
    assert status == 202

    # Exactly once: each job imported by one worker once, each row there once.
    deadline = time.monotonic() + 30
    while client.request("GET", f"/jobs/{job_id}", token=token)[2]["status"] != "done":
        assert time.monotonic() < deadline, "the job after the rejoin did not run"
        time.sleep(0.3)
    counts = imported_counts(lab)
    assert {job: counts.get(job, 0) for job in rows} == {job: 1 for job in rows}
    # Any job of the user (those refused included, at most 20 here): done once or never run.
    every_job = client.request("GET", "/jobs", token=token)[2]["data"]
    assert len(every_job) < 20
    assert all(counts.get(job["id"], 0) == (job["status"] == "done") for job in every_job), (
        [(job["id"], job["status"], counts.get(job["id"])) for job in every_job])
    contents = every_content(lab, client, token)
    assert len(contents) == len(set(contents))
    assert set(contents) >= {content for job_rows in rows.values() for content in job_rows}
    refused = [(round(when, 1), status) for when, status in answers if status != 202]
    first = next(when for when, status in answers if status == 202)
    print(f"\n{old} cut: replica on {new} promoted {promoted:.1f}s after the cut; POST /jobs "
          f"refused {refused}, then accepted from {first:.1f}s; {len(rows)} jobs accepted, "
          f"all done {all_done:.1f}s after the cut, each imported once; {old} a replica "
          f"{rejoined:.1f}s after its link came back")


def every_content(lab: Lab, client: Client, token: str) -> list[str]:
    """The contents of the user's todos, every page followed through the edge host."""
    contents: list[str] = []
    path: str | None = "/todo?limit=100"
    while path:
        status, _, page = client.request("GET", path, token=token)
        assert status == 200, "\n".join([str(page), *instance_errors(lab)])
        contents += [todo["content"] for todo in page["data"]]
        path = page["next"] and "/todo?" + page["next"].split("?", 1)[1]
    return contents


def instance_errors(lab: Lab) -> list[str]:
    """The app hosts' logged errors, to say why a request failed."""
    lines = []
    for host in ("app1", "app2"):
        for log in sorted(Path(lab.path(host, "log")).glob("todo_*.log")):
            lines += [f"{host}: {line[:3000]}" for line in log.read_text().splitlines()
                      if '"status": 500' in line or "Traceback" in line or "exc_info" in line
                      or '"exception"' in line]
    return lines[-10:]


# -- down -----------------------------------------------------------------------------------
def test_zz_down_leaves_nothing_behind(lab, links_before):
    pids = [pid for name in lab.netns for pid in netns.pids(name)]
    assert pids
    commands.down(lab)
    assert not any(netns.exists(name) for name in lab.netns)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout
    assert NAME not in listed
    assert not any(alive(pid) for pid in pids)
    assert root_links() == links_before
