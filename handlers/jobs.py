"""The job routes: start a job off the request path, then follow it."""

from __future__ import annotations

from typing import Any

from tornado.http1connection import HTTP1Connection

from server.domain import import_form, jobs, uploads, validation
from server.domain.uploads import ImportUpload

from .base import APIHandler


class JobListHandler(APIHandler):
    """`POST /jobs` takes JSON, or for an import a multipart/form-data upload: the one body
    allowed to be large, streamed to GridFS as it arrives (server/domain/uploads.py)."""

    upload: ImportUpload | None = None

    @property
    def is_upload(self) -> bool:
        return self.request.method == "POST" and import_form.is_upload(
            self.request.headers.get("Content-Type")
        )

    @property
    def body_limit(self) -> int:
        if self.is_upload:
            return import_form.body_limit(self.services.settings.max_upload_size)
        return super().body_limit

    def too_large_message(self) -> str:
        if self.is_upload:
            return import_form.too_large_message(self.services.settings.max_upload_size)
        return super().too_large_message()

    async def prepare(self) -> None:
        await super().prepare()  # 405, a declared length over the limit, the token
        if not self.is_upload:
            return
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.set_max_body_size(self.body_limit + import_form.CHUNKED_SLACK)
            connection.set_body_timeout(import_form.BODY_TIMEOUT)
        self.upload = ImportUpload(
            self.services.db, owner=self.user_id,
            content_type=self.request.headers["Content-Type"],
            max_file_size=self.services.settings.max_upload_size,
        )

    async def data_received(self, chunk: bytes) -> None:
        if self.upload is None:
            super().data_received(chunk)
        else:
            await self.upload.feed(chunk)  # awaited by Tornado: the next chunk waits for it

    async def get(self) -> None:
        """The caller's most recent jobs, newest first."""
        self.write({"data": await self.jobs.recent(owner=self.user_id)})

    async def post(self) -> None:
        """Queue a job; 202 with the job, which the client follows at its Location."""
        if self.upload is not None:
            job = await self._start_import(self.upload)
        else:
            fields = validation.parse_json_object(
                self.body, self.request.headers.get("Content-Type")
            )
            new = validation.job_create(fields)
            job = await self.jobs.start(owner=self.user_id, kind=new.type, params=new.params)
        self.set_status(202)
        self.set_header("Location", f"/jobs/{job['id']}")
        self.write(job)

    async def _start_import(self, upload: ImportUpload) -> dict[str, Any]:
        done = await upload.finish()
        try:
            return await self.jobs.start(owner=self.user_id, kind="import", params=done.params,
                                         private={jobs.IMPORT_FILE: done.file_id})
        except BaseException:
            await upload.discard(force=True)  # no job will ever read it
            raise

    def on_connection_close(self) -> None:
        # The client went away mid-upload: what it sent so far is deleted.
        if self.upload is not None:
            uploads.discard_later(self.upload)
        super().on_connection_close()


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
