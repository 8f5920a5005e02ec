"""Group commit: writes arriving during a flush share the next one; each writer still waits for its own."""

from __future__ import annotations

import asyncio

import pytest

from snapworker.idempotency.group_commit import GroupCommit


class Flushes:
    """A flush that records what it was given and finishes when the test releases it."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gates: list[asyncio.Future[None]] = []

    async def __call__(self, items: list[str]) -> None:
        self.calls.append(items)
        gate = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        await gate

    def release(self, index: int, error: Exception | None = None) -> None:
        if error is None:
            self.gates[index].set_result(None)
        else:
            self.gates[index].set_exception(error)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_lone_write_is_flushed_at_once_and_returns_when_flushed() -> None:
    flushes = Flushes()
    commit = GroupCommit(flushes)
    write = asyncio.create_task(commit.write(["a", "b"]))
    await settle()
    assert flushes.calls == [["a", "b"]]
    assert not write.done()
    flushes.release(0)
    await write


async def test_writes_arriving_during_a_flush_share_the_next_one() -> None:
    flushes = Flushes()
    commit = GroupCommit(flushes)
    first = asyncio.create_task(commit.write(["a"]))
    await settle()
    later = [asyncio.create_task(commit.write([item])) for item in ("b", "c")]
    await settle()
    assert flushes.calls == [["a"]]
    flushes.release(0)
    await first
    await settle()
    assert flushes.calls == [["a"], ["b", "c"]]
    assert not any(task.done() for task in later)
    flushes.release(1)
    await asyncio.gather(*later)


async def test_a_failed_flush_fails_each_of_its_writers_and_the_next_writes_still_go() -> None:
    flushes = Flushes()
    commit = GroupCommit(flushes)
    first = asyncio.create_task(commit.write(["a"]))
    await settle()
    flushes.release(0, OSError("disk gone"))
    with pytest.raises(OSError, match="disk gone"):
        await first
    second = asyncio.create_task(commit.write(["b"]))
    await settle()
    flushes.release(1)
    await second
    assert flushes.calls == [["a"], ["b"]]


async def test_a_cancelled_writer_does_not_cancel_the_flush_others_wait_for() -> None:
    flushes = Flushes()
    commit = GroupCommit(flushes)
    blocking = asyncio.create_task(commit.write(["a"]))
    await settle()
    cancelled = asyncio.create_task(commit.write(["b"]))
    kept = asyncio.create_task(commit.write(["c"]))
    await settle()
    cancelled.cancel()
    flushes.release(0)
    await blocking
    await settle()
    assert flushes.calls == [["a"], ["b", "c"]]
    flushes.release(1)
    await kept
    assert cancelled.cancelled()


async def test_wait_idle_returns_once_every_write_so_far_is_flushed() -> None:
    flushes = Flushes()
    commit = GroupCommit(flushes)
    write = asyncio.create_task(commit.write(["a"]))
    await settle()
    idle = asyncio.create_task(commit.wait_idle())
    await settle()
    assert not idle.done()
    flushes.release(0)
    await idle
    await write
