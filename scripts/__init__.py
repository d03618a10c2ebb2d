"""Operator and developer tools: the stack (`stack/`), local servers, indexes, seeding, the
benchmark (`benchmark/`).

May import server.web, server.domain and server.infra (as an instance would); never
server.worker or handlers.
"""
