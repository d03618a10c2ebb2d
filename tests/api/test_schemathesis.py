"""The whole OpenAPI document, run by schemathesis against the real server.

Every operation of server/openapi.json goes through all of schemathesis's phases: the
document's own examples, coverage of its boundaries (each constraint just met and just
broken), property-based fuzzing with valid and invalid data, and stateful chains that follow
the document's `links`. Every check applies: a document that allows what the server refuses
(or forbids what it accepts), or describes answers the server does not give, fails the test.

The server is `python -m server`, a process of its own on a free loopback port with the
test's MongoDB database and Redis prefix: schemathesis drives it over real sockets from this
process (a server in this process would share Hypothesis's global random state and the GIL).
No Celery worker runs, so the jobs the run starts stay queued.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import schemathesis
from schemathesis.engine import Status, events, from_schema
from schemathesis.hooks import GLOBAL_HOOK_DISPATCHER

from scripts.local_services import free_port
from server.domain import validation
from server.domain.errors import BadRequest
from server.infra.settings import PROJECT_ROOT, Settings

# Per operation and phase; the whole file stays well under 3 minutes on 2 shared cores.
MAX_EXAMPLES = int(os.environ.get("TODO_SCHEMATHESIS_MAX_EXAMPLES", "20"))
STATEFUL_SCENARIOS = int(os.environ.get("TODO_SCHEMATHESIS_SCENARIOS", "60"))
# Fixed, so that a failure found once is found again; TODO_SCHEMATHESIS_SEED explores others.
SEED = int(os.environ.get("TODO_SCHEMATHESIS_SEED", "20250604"))
PASSWORD = "correct horse"
PHASES = ("examples", "coverage", "fuzzing", "stateful")
# What schemathesis's positive_data_acceptance check accepts by default for valid data.
POSITIVE_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
# And what its not_a_server_error check accepts.
SERVER_ERROR_FREE = ["2xx", "3xx", "4xx"]


# -- the server ---------------------------------------------------------------------------------
def server_env(settings: Settings, port: int) -> dict[str, str]:
    """The test's settings as the server reads them: TODO_<NAME> for every setting."""
    env = dict(os.environ)
    for name, value in dataclasses.asdict(settings).items():
        env[f"TODO_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env["TODO_PORT"] = str(port)
    return env


@pytest.fixture
def server(services: Any, settings: Settings, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`python -m server` on the test's data (`services` made its indexes and drops it all
    afterwards); its base URL and its log."""
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "server"], env=server_env(settings, port), cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text(errors="replace")
            try:
                if requests.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.05)
        yield base_url, log_path
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)  # graceful: its coverage data is written
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
        # The jobs the run started, still queued, must not reach a later test's worker.
        with redis.Redis.from_url(settings.broker_url) as broker:
            broker.flushdb()


# -- schemathesis -------------------------------------------------------------------------------
def make_config(base_url: str, phases: tuple[str, ...] = PHASES) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "base-url": base_url,
        "seed": SEED,
        "workers": 1,
        "request-timeout": 20,
        "generation": {
            "mode": "all",  # valid and invalid data: the positive and negative checks both apply
            "max-examples": MAX_EXAMPLES,
            "database": "none",  # nothing written to .hypothesis/
        },
        "checks": {"enabled": True},
        "operations": [{
            "include-name": "GET /todo",
            # Its query is one object parameter (so that the document can say "not start and
            # cursor together"), whose properties Hypothesis mostly leaves out: more examples,
            # so that cursors, limits and filters really get combined (the calls are cheap).
            "generation": {"max-examples": 5 * MAX_EXAMPLES},
        }, {
            # schemathesis leaves out the operation that served the document it runs unless
            # it is named: it is an operation of the API like the others.
            "include-name": "GET /openapi.json",
            "enabled": True,
        }, {
            "include-name": "POST /todo",
            # A schema-valid create is also answered 422 when its Idempotency-Key was used
            # before with another content (documented): a conflict with an earlier request,
            # like the 409 that schemathesis already expects of valid data.
            "checks": {"positive_data_acceptance": {"expected-statuses": [
                *POSITIVE_STATUSES, "422",
            ]}},
        }, {
            "include-name": "GET /ws",
            # A handshake the server takes is answered 101 Switching Protocols (documented),
            # the one success of this operation; schemathesis's defaults know only 2xx and 3xx.
            "checks": {
                "not_a_server_error": {"expected-statuses": [*SERVER_ERROR_FREE, "101"]},
                "positive_data_acceptance": {"expected-statuses": [*POSITIVE_STATUSES, "101"]},
            },
        }],
        "phases": {
            "examples": {"enabled": "examples" in phases},
            "coverage": {"enabled": "coverage" in phases},
            "fuzzing": {"enabled": "fuzzing" in phases},
            "stateful": {
                "enabled": "stateful" in phases,
                # Scenarios, each a chain of calls along the links.
                "generation": {"max-examples": STATEFUL_SCENARIOS},
                # The document's links only: the chains it promises, not ones schemathesis
                # would guess from Location headers or field names.
                "inference": {"algorithms": []},
            },
        },
    })


class Account:
    """A user registered through `POST /users`, its tokens issued by `POST /tokens`."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.username = f"st-{uuid.uuid4().hex[:12]}"
        self.http = requests.Session()
        created = self.http.post(f"{base_url}/users", timeout=20,
                                 json={"username": self.username, "password": PASSWORD})
        assert created.status_code == 201, created.text
        self.token = self.issue()

    def issue(self) -> str:
        issued = self.http.post(f"{self.base_url}/tokens", timeout=20,
                                json={"username": self.username, "password": PASSWORD})
        assert issued.status_code == 201, issued.text
        token: str = issued.json()["token"]
        return token


def authenticate(schema: Any, account: Account) -> None:
    # No caching and no re-login on a 401 (retry_on=[]): a 401 for a good token is a failure.
    @schema.auth(refresh_interval=None, retry_on=[])
    class BearerToken:
        """The run's token on every call, except that `DELETE /tokens/current` and
        `DELETE /session` revoke a token of their own: logging out must not log the rest of
        the run out."""

        def get(self, case: schemathesis.Case, ctx: schemathesis.AuthContext) -> str:
            if ctx.operation.label in ("DELETE /tokens/current", "DELETE /session"):
                return account.issue()
            return account.token

        def set(self, case: schemathesis.Case, data: str, ctx: schemathesis.AuthContext) -> None:
            if "access_token" in (case.query or {}):
                return  # GET /ws authenticated by its query (a header would take precedence)
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


# Headers that frame the HTTP message rather than carry an input of the API: requests computes
# them from the URL and the body. One generated at random (negative data may add undeclared
# headers, with names learned from the server's answers) is refused by Tornado's HTTP layer
# with a bare `400` before any route runs, which no operation of the document can describe.
FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})


def filter_headers(ctx: schemathesis.HookContext, headers: dict[str, Any] | None) -> bool:
    """Generated headers never replace the framing ones (every other header is kept)."""
    return not FRAMING_HEADERS & {name.lower() for name in headers or {}}


def close_if_upgraded(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """A 101's connection is a WebSocket from then on: close it before the response is read,
    so that the pool never sends the next request into the socket's messages."""
    if response.status_code == 101:
        response.raw.close()


def before_call(ctx: schemathesis.HookContext, case: schemathesis.Case,
                kwargs: dict[str, Any]) -> None:
    """Adds `close_if_upgraded` to each request (a client-side hook: the request is unchanged)."""
    hooks = kwargs.setdefault("hooks", {})
    hooks["response"] = [*hooks.get("response", []), close_if_upgraded]


@contextlib.contextmanager
def websocket_aware_calls() -> Iterator[None]:
    """`before_call` for the run only (schemathesis keeps `before_call` hooks process-wide)."""
    schemathesis.hook(before_call)
    try:
        yield
    finally:
        GLOBAL_HOOK_DISPATCHER.unregister(before_call)


@dataclass
class Run:
    phases: dict[str, str] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)  # by phase
    operations: Counter[str] = field(default_factory=Counter)  # calls by operation
    links: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    failed: set[tuple[str, str]] = field(default_factory=set)  # (operation, check)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stop_reason: str = ""

    def report(self) -> str:
        return "\n".join([
            f"stop: {self.stop_reason}", f"phases: {self.phases}", f"calls: {dict(self.calls)}",
            f"operations: {dict(self.operations)}",
            f"links followed: {dict(self.links)}", *self.warnings, *self.errors, *self.failures,
        ])


def failures_of(event: events.ScenarioFinished) -> Iterator[str]:
    recorder = event.recorder
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.status != Status.FAILURE or check.failure_info is None:
                continue
            interaction = recorder.interactions.get(case_id)
            response = interaction.response if interaction else None
            failure = check.failure_info.failure
            answer = (f"\n    answered {response.status_code}: {response.content[:300]!r}"
                      if response is not None else "")
            yield (f"[{event.phase.value}] {recorder.label}: {check.name}: {failure.title}"
                   f"\n    {failure.message}\n    {check.failure_info.code_sample}{answer}")


def run_schemathesis(base_url: str, *, document: dict[str, Any] | None = None,
                     operations: list[str] | None = None,
                     phases: tuple[str, ...] = PHASES) -> Run:
    """What `schemathesis run` does (its engine: probing, then every phase) against the server,
    with an account of the run's own; the served document unless another is given."""
    config = make_config(base_url, phases)
    if document is None:
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config)
    else:
        schema = schemathesis.openapi.from_dict(document, config=config)
    if operations is not None:
        # (`include` would not narrow a schema whose config has `operations` entries.)
        schema = schema.exclude(lambda ctx: ctx.operation.label not in operations)
    account = Account(base_url)
    authenticate(schema, account)
    schema.hook(filter_headers)
    run = Run()
    with contextlib.closing(account.http), websocket_aware_calls():
        for event in from_schema(schema).execute():
            record(run, event)
    return run


def record(run: Run, event: events.EngineEvent) -> None:
    if isinstance(event, events.PhaseFinished):
        run.phases[event.phase.name.value] = (
            event.status.value if event.phase.is_enabled
            else f"skipped ({event.phase.skip_reason})"
        )
    elif isinstance(event, events.ScenarioFinished):
        for node in event.recorder.cases.values():
            run.calls[event.phase.value] += 1
            run.operations[node.value.operation.label] += 1
            if node.transition is not None and node.is_transition_applied:
                run.links[node.transition.id] += 1
        run.failures.extend(failures_of(event))
        run.failed.update(
            (event.recorder.label, check.name)
            for checks in event.recorder.checks.values() for check in checks
            if check.status == Status.FAILURE
        )
        if event.skip_warning is not None:
            run.warnings.append(f"warning: {event.recorder.label}: {event.skip_warning}")
    elif isinstance(event, events.NonFatalError):
        run.errors.append(f"[{event.phase}] {event.label}: {event.info.format()}")
    elif isinstance(event, events.FatalError):
        run.errors.append(f"fatal: {event.exception!r}")
    elif isinstance(event, events.SchemaAnalysisWarnings):
        run.warnings.extend(f"warning: {warning}" for warning in event.warnings)
    elif isinstance(event, events.EngineFinished):
        run.stop_reason = event.stop_reason.value


def server_errors(log_path: Path) -> list[str]:
    return [line for line in log_path.read_text(errors="replace").splitlines()
            if "Traceback" in line or " 500 " in line]


# -- the tests ----------------------------------------------------------------------------------
def test_the_server_answers_exactly_as_its_openapi_document_says(server):
    base_url, log_path = server
    run = run_schemathesis(base_url)
    report = run.report()
    print(report)
    assert not run.failures, report
    assert not run.errors, report
    assert not server_errors(log_path)
    assert run.stop_reason == "completed", report
    assert run.phases == {**dict.fromkeys(run.phases, "success")}, report
    assert set(PHASES) <= set(run.phases), report
    # Every operation of the document was called: none left out.
    document = requests.get(f"{base_url}/openapi.json", timeout=20).json()
    documented = {f"{method.upper()} {path}" for path, item in document["paths"].items()
                  for method in item if method != "parameters"}
    assert set(run.operations) == documented, report
    # The stateful phase really chained calls along the document's links: several kinds of
    # them, among which the calls on a todo just created (by the id in its answer).
    assert run.calls["stateful"] > 0, report
    assert sum(run.links.values()) >= 10, report
    assert len(run.links) >= 3, report
    assert any(link.startswith("POST /todo -> [201]") for link in run.links), report


def loosened(document: dict[str, Any]) -> dict[str, Any]:
    """The document as it was before it said exactly what the server takes: an empty cursor,
    an empty import file and a plain GET /ws were all valid by it."""
    loose = copy.deepcopy(document)
    query = loose["components"]["parameters"]["TodoListQuery"]
    query["schema"]["properties"]["cursor"] = {"type": "string"}
    del query["examples"]  # nor had it examples of a query
    upload = loose["components"]["schemas"]["ImportUpload"]["properties"]["file"]
    upload.pop("format")
    upload.pop("minLength")
    notifications = loose["paths"]["/ws"]["get"]
    notifications["parameters"] = [
        parameter for parameter in notifications["parameters"] if parameter["in"] != "header"
    ]
    return loose


def test_a_document_looser_than_the_server_fails_the_run(server):
    """The run above can fail: the same run, on the three operations that were looser than the
    server and with the coverage and fuzzing phases only, finds each looseness (the document
    allows what the server refuses)."""
    base_url, _ = server
    document = requests.get(f"{base_url}/openapi.json", timeout=20).json()
    run = run_schemathesis(base_url, document=loosened(document), phases=("coverage", "fuzzing"),
                           operations=["GET /todo", "POST /jobs", "GET /ws"])
    refused = {operation for operation, check in run.failed if check == "positive_data_acceptance"}
    assert refused == {"GET /todo", "POST /jobs", "GET /ws"}, run.report()


@pytest.mark.parametrize(("days", "accepted"), [(30, True), (30.0, True), (30.5, False)])
def test_a_whole_number_of_days_is_an_integer_however_written(days, accepted):
    """JSON Schema's `integer` (the document's) takes 30.0 as well as 30: so does the server."""
    if accepted:
        assert validation.job_create({"type": "purge", "older_than_days": days}).params == {
            "older_than_days": 30
        }
    else:
        with pytest.raises(BadRequest):
            validation.job_create({"type": "purge", "older_than_days": days})
