"""Consistent online backups of the service's MongoDB database, and their restore
(`scripts/backup`, `scripts/restore`; docs/operations.md#backups)."""
