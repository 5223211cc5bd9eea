"""aipt.queue.runner.Worker claims a job in one script: it must mean exactly what arq's WATCH/MULTI claim means."""

import asyncio
import uuid

import pytest
import redis.exceptions
from arq import func
from arq.constants import in_progress_key_prefix

from aipt import queue
from aipt.queue.runner import Worker
from tests.servers import make_settings


@pytest.fixture
async def arq_redis():
    r = queue.connect(make_settings("postgresql:///unused"))
    r.default_queue_name = f"aipt:test:start:{uuid.uuid4().hex[:8]}"
    yield r
    await queue.close(r)


def worker(redis, ran: list, **options) -> Worker:
    async def job(ctx: dict, n: int) -> None:
        ran.append((ctx["job_id"], await redis.pttl(in_progress_key_prefix + ctx["job_id"])))
        await asyncio.sleep(0.001)  # yield, as a job waiting on Postgres does

    return Worker(
        functions=[func(job, name="job")],
        redis_pool=redis,
        queue_name=redis.default_queue_name,
        burst=True,
        handle_signals=False,
        keep_result=0,
        poll_delay=0.01,
        **options,
    )


async def test_two_workers_racing_run_every_job_exactly_once(arq_redis):
    for n in range(300):
        await arq_redis.enqueue_job("job", n, _job_id=f"j{n}")
    ran: list = []
    # The first jobs hold their slots until both workers run one, so neither can take the whole queue
    # before the other has started (one worker alone can hold only 8).
    racing, both_racing = set(), asyncio.Event()

    async def hold_until_both_race(job_ctx: dict) -> None:
        racing.add(job_ctx["worker"])
        if len(racing) == 2:
            both_racing.set()
        await both_racing.wait()

    workers = [
        worker(arq_redis, ran, max_jobs=8, ctx={"worker": n}, on_job_start=hold_until_both_race) for n in range(2)
    ]
    await asyncio.wait_for(asyncio.gather(*(w.main() for w in workers)), 30)
    assert sorted(job_id for job_id, _ in ran) == sorted(f"j{n}" for n in range(300))
    assert all(w.jobs_complete > 0 for w in workers)  # both took part in the race
    assert await arq_redis.zcard(arq_redis.default_queue_name) == 0


async def test_only_a_queued_due_job_not_in_progress_is_started(arq_redis):
    await arq_redis.enqueue_job("job", 1, _job_id="due")
    await arq_redis.enqueue_job("job", 2, _job_id="elsewhere")
    await arq_redis.set(in_progress_key_prefix + "elsewhere", b"1", px=60_000)  # another worker runs it
    await arq_redis.enqueue_job("job", 3, _job_id="later", _defer_by=60)
    ran: list = []
    w = worker(arq_redis, ran, job_timeout=20)
    slots = w.sem._value
    await w.start_jobs([b"elsewhere", b"later", b"gone", b"due"])
    await asyncio.gather(*w.tasks.values())
    assert [job_id for job_id, _ in ran] == ["due"]
    assert 29_000 < ran[0][1] <= 30_000  # claimed for arq's in-progress timeout: job_timeout + 10 s
    # Nothing else changed: the skipped jobs are still queued, the other worker's claim still stands.
    queued = {m.decode() for m in await arq_redis.zrange(arq_redis.default_queue_name, 0, -1)}
    assert queued == {"elsewhere", "later"}
    assert await arq_redis.pttl(in_progress_key_prefix + "elsewhere") > 50_000
    assert not await arq_redis.exists(in_progress_key_prefix + "later", in_progress_key_prefix + "gone")
    assert (w.job_counter, w.sem._value) == (0, slots)  # every slot given back


async def test_the_claim_survives_redis_forgetting_its_scripts(arq_redis):
    """A Redis restart empties its script cache: the claim loads the script again."""
    ran: list = []
    w = worker(arq_redis, ran)
    await arq_redis.enqueue_job("job", 1, _job_id="before")
    await w.start_jobs([b"before"])
    await arq_redis.script_flush()
    await arq_redis.enqueue_job("job", 2, _job_id="after")
    await w.start_jobs([b"after"])
    await asyncio.gather(*w.tasks.values())
    assert [job_id for job_id, _ in ran] == ["before", "after"]


async def test_a_claim_that_fails_gives_its_slot_back(arq_redis):
    """Redis gone mid-claim: the error reaches arq's loop as before, and the worker keeps all its slots."""
    await arq_redis.enqueue_job("job", 1, _job_id="one")
    ran: list = []
    w = worker(arq_redis, ran)
    slots = w.sem._value
    dead = queue.connect(make_settings("postgresql:///unused", redis_url="redis://127.0.0.1:1/0"))
    w._pool = dead
    with pytest.raises(redis.exceptions.ConnectionError):
        await w.start_jobs([b"one"])
    await queue.close(dead)
    assert (w.job_counter, w.sem._value, ran) == (0, slots, [])
    w._pool = arq_redis
    await w.start_jobs([b"one"])  # and it claims once Redis answers again
    await asyncio.gather(*w.tasks.values())
    assert [job_id for job_id, _ in ran] == ["one"]
