"""The Todo API service: a Tornado application on MongoDB and Redis."""
