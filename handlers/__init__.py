"""Tornado RequestHandler classes; each module ends with its `default_handlers` route list."""
