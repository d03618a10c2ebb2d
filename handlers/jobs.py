"""The job routes: start a job off the request path, then follow it."""

from __future__ import annotations

from server import validation

from .base import APIHandler


class JobListHandler(APIHandler):
    async def get(self) -> None:
        """The caller's most recent jobs, newest first."""
        self.write({"data": await self.jobs.recent(owner=self.user_id)})

    async def post(self) -> None:
        """Queue a job; 202 with the job, which the client follows at its Location."""
        fields = validation.parse_json_object(self.body, self.request.headers.get("Content-Type"))
        new = validation.job_create(fields)
        job = await self.jobs.start(owner=self.user_id, kind=new.type, params=new.params)
        self.set_status(202)
        self.set_header("Location", f"/jobs/{job['id']}")
        self.write(job)


class JobHandler(APIHandler):
    async def get(self, job_id: str) -> None:
        """One job of the caller's: its status, progress, result or error."""
        oid = validation.object_id(job_id, "job")
        self.write(await self.jobs.get(owner=self.user_id, job_id=oid))


default_handlers = [
    (r"/jobs", JobListHandler),
    (r"/jobs/(?P<job_id>[^/]+)", JobHandler),
]
