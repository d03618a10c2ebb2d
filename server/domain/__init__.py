"""The web side's domain: the stores and rules behind the HTTP API.

The stores (`todos`, `users`, `jobs` with its job states), the errors every layer raises and
one place maps to a status (`errors`), body and query validation (`validation`), list paging
(`paging`), bearer tokens and the request's `Principal` (`tokens`), password hashing
(`passwords`), the MongoDB indexes (`indexes`), an import's upload streamed into GridFS
(`uploads`, `import_form`, `upload_files`), and the read side of a finished job's file
(`job_files`).

May import: server.infra and itself; never server.web, server.worker or handlers. A store hands
work to the workers only through server.infra.queue.enqueue, never by importing the worker.
"""
