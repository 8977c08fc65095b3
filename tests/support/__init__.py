"""Helpers the tests share: a real PostgreSQL server, waiting on conditions, free ports."""
