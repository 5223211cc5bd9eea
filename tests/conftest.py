"""The suite's tiers (docs/architecture.md):

  tests/unit         no Postgres, no Redis: pure logic, import rules, the queue's pins on arq
  tests/integration  real Postgres and Redis: a template database cloned per test (tests/servers.py)
  tests/acceptance   real processes: `aipt` commands, workers killed, `aipt dev`, the psql script, upgrades

`pytest tests/unit` runs with DATABASE_URL and REDIS_URL pointing nowhere; only the other two tiers'
conftests take the server fixtures.
"""
