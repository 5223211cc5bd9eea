"""Fixtures on real services: a template database built by the migrations, cloned per test."""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from aipt import migrate

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
TEMPLATE = f"aipt_tpl_{os.getpid()}"


def database_url(name: str) -> str:
    parts = urlsplit(ADMIN_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin() -> asyncpg.Connection:
    return await asyncpg.connect(ADMIN_URL)


async def create_database(name: str, template: str | None = None) -> str:
    conn = await _admin()
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
        await conn.execute(f'create database "{name}"' + (f' template "{template}"' if template else ""))
    finally:
        await conn.close()
    return database_url(name)


async def drop_database(name: str) -> None:
    conn = await _admin()
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def template_db():
    """A database where every migration ran; each test clones it."""
    url = await create_database(TEMPLATE)
    conn = await asyncpg.connect(url)
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()
    yield TEMPLATE
    await drop_database(TEMPLATE)


@pytest.fixture
async def db_url(template_db):
    """A fresh, fully migrated database for one test."""
    name = f"aipt_t_{uuid.uuid4().hex[:12]}"
    url = await create_database(name, template=template_db)
    yield url
    await drop_database(name)


@pytest.fixture
async def conn(db_url):
    """A superuser connection to the test's database."""
    c = await asyncpg.connect(db_url)
    yield c
    await c.close()


@pytest.fixture
async def pool(db_url):
    p = await asyncpg.create_pool(db_url, min_size=1, max_size=10)
    yield p
    await p.close()
