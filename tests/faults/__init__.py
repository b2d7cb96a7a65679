"""Fault suites: a real service and its callers while the server or the input misbehaves."""
