"""An agent thread's own loop: ``run_to_completion`` runs a handler's first step in one turn of the loop, as
a task, and the loop on only for what is still waiting; asyncio must behave as under ``run_until_complete``."""

from __future__ import annotations

import asyncio

import pytest

from arc_actors.cell import run_to_completion


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def no_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


def test_a_handler_that_never_waits_runs_as_a_task_in_one_turn_of_the_loop(loop, monkeypatch):
    def refuse(*_):
        raise AssertionError("the loop was run")

    monkeypatch.setattr(loop, "run_until_complete", refuse)

    async def handler():
        task = asyncio.current_task()
        return task is not None and not task.done(), asyncio.get_running_loop() is loop

    assert run_to_completion(loop, handler()) == (True, True)
    assert no_running_loop()


def test_timeouts_and_waits_in_the_first_step_and_after_it(loop):
    async def waits():
        async with asyncio.timeout(5):
            await asyncio.sleep(0.001)
        async with asyncio.timeout(0.01):
            await asyncio.sleep(5)

    with pytest.raises(TimeoutError):
        run_to_completion(loop, waits())

    async def answers():
        await asyncio.sleep(0)
        return "late"

    assert run_to_completion(loop, answers()) == "late"


def test_an_exception_is_raised_and_the_loop_is_left_not_running(loop):
    async def crashes():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_to_completion(loop, crashes())
    assert not loop.is_running() and no_running_loop()


def test_a_task_a_handler_leaves_behind_runs_on_with_the_next_requests(loop):
    seen = []

    async def leaves_work():
        async def later():
            await asyncio.sleep(0)
            seen.append("background")

        leaves_work.task = asyncio.get_running_loop().create_task(later())
        return "answered"

    assert run_to_completion(loop, leaves_work()) == "answered"

    async def next_request():
        await asyncio.sleep(0.01)
        return "next"

    assert run_to_completion(loop, next_request()) == "next"
    assert seen == ["background"] and leaves_work.task.done()


def test_a_callback_queued_before_the_handler_runs_first(loop):
    order = []
    loop.call_soon(order.append, "queued")

    async def handler():
        order.append("handler")

    run_to_completion(loop, handler())
    assert order == ["queued", "handler"]


def test_an_async_generator_a_handler_leaves_half_read_is_closed_by_its_loop(loop):
    closed = []

    async def tokens():
        try:
            while True:
                await asyncio.sleep(0.001)
                yield "token"
        finally:
            await asyncio.sleep(0)
            closed.append(True)

    async def reads_one():
        async for token in tokens():
            return token

    assert run_to_completion(loop, reads_one()) == "token"
    run_to_completion(loop, asyncio.sleep(0.01))  # the loop runs again: the finalizer's aclose() with it
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert closed == [True]


def test_timeouts_of_handlers_that_never_wait_never_fire_later(loop):
    fired = []

    async def bounded():
        async with asyncio.timeout(0.01) as timeout:
            assert asyncio.get_running_loop().is_running()
            timeout.when()  # a timer is set for this handler
            return "quick"

    for _ in range(50):
        assert run_to_completion(loop, bounded()) == "quick"

    async def waits_past_them():
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            fired.append(True)
        return "done"

    assert run_to_completion(loop, waits_past_them()) == "done"
    assert fired == []


def test_a_task_factory_set_on_the_agents_loop_makes_the_next_handlers_task(loop):
    class Marked(asyncio.Task):
        pass

    async def installs():
        asyncio.get_running_loop().set_task_factory(lambda loop, coro, **kwargs: Marked(coro, loop=loop, **kwargs))

    async def kind():
        return type(asyncio.current_task()).__name__

    assert run_to_completion(loop, kind()) == "Task"
    run_to_completion(loop, installs())
    assert run_to_completion(loop, kind()) == "Marked"
