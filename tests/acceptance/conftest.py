"""Real Postgres and Redis: the server fixtures of tests/servers.py."""

from tests.servers import *  # noqa: F403 - pytest finds fixtures by name in a conftest's namespace
