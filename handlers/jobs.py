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


class JobResultHandler(APIHandler):
    async def get(self, job_id: str) -> None:
        """A finished export's file, sent a GridFS chunk at a time (never held whole)."""
        oid = validation.object_id(job_id, "job")
        export = await self.jobs.export_file(owner=self.user_id, job_id=oid)
        self.set_header("Content-Type", export.content_type)
        self.set_header("Content-Disposition", f'attachment; filename="{export.filename}"')
        async for chunk in export.chunks():
            self.write(chunk)
            # Out to the socket before the next chunk is read: a slow client holds one chunk.
            await self.flush()


default_handlers = [
    (r"/jobs", JobListHandler),
    (r"/jobs/(?P<job_id>[^/]+)", JobHandler),
    (r"/jobs/(?P<job_id>[^/]+)/result", JobResultHandler),
]
