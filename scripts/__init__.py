"""Operator and developer tools: local servers, indexes, seeding."""
