"""Operator and developer tools: the stack (`stack/`), local servers, indexes, seeding, load tests.

May import server.web, server.domain and server.infra (as an instance would); never
server.worker or handlers.
"""
