"""Recovery after a hard kill: tasks a gone process left running are failed by the next process to start
on the same SQLite file; a live process's tasks are never touched. Real processes, a real ``kill -9``."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

from conftest import Receiver, arc_post, envelope, free_port, run, start, wait_healthy


def said(text: str) -> dict:
    return {"role": "user", "parts": [{"type": "TextPart", "content": text}]}


SLOW_TASKS_APP = """
import asyncio

from arc_actors import Agent, Server


class SlowTasks(Agent):
    agent_id = "slow-tasks"

    async def task_create(self, params, context):
        await asyncio.sleep(600)
        return "done"


server = Server(server_id="recovery")
server.add_agent(SlowTasks)
"""


def _working_task(port: int) -> str:
    """Create a task on the server at ``port`` and wait until its run is WORKING; its id."""
    created = arc_post(port, envelope("slow-tasks", "task.create", {"initialMessage": said("work")}))
    task_id = created["result"]["task"]["taskId"]
    deadline = time.monotonic() + 10
    while _task_status(port, task_id) != "WORKING":
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)
    return task_id


def _task_status(port: int, task_id: str) -> str:
    answer = arc_post(port, envelope("slow-tasks", "task.info", {"taskId": task_id}))
    return answer["result"]["task"]["status"]


def _serve_app(app: Path, state: Path, stopper) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = start("serve", str(app), "--port", str(port), env={"ARC_STATE_PATH": str(state)})
    stopper(process)
    wait_healthy(port, process)
    return process, port


def test_tasks_a_killed_process_left_running_are_failed_by_the_next_one_and_a_live_ones_are_not(tmp_path, stopper):
    app, state = tmp_path / "app.py", tmp_path / "state.db"
    app.write_text(SLOW_TASKS_APP)

    def lives(hooks: str) -> tuple[dict, str, int, int]:
        killed, killed_port = _serve_app(app, state, stopper)
        _, live_port = _serve_app(app, state, stopper)
        orphan, kept = _working_task(killed_port), _working_task(live_port)
        subscribe = {"taskId": orphan, "callbackUrl": hooks, "events": ["TASK_FAILED"]}
        assert arc_post(killed_port, envelope("slow-tasks", "task.subscribe", subscribe))["error"] is None
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
        _, next_port = _serve_app(app, state, stopper)
        info = arc_post(next_port, envelope("slow-tasks", "task.info", {"taskId": orphan}))["result"]["task"]
        return info, kept, live_port, next_port

    async def scenario() -> tuple[dict, str, int, int, list]:
        async with Receiver() as receiver:
            info, kept, live_port, next_port = await asyncio.to_thread(lives, receiver.url)
            deadline = time.monotonic() + 10
            while not receiver.requests:
                assert time.monotonic() < deadline, "the subscriber was never told"
                await asyncio.sleep(0.02)
        return info, kept, live_port, next_port, [json.loads(body) for _, body in receiver.requests]

    info, kept, live_port, next_port, told = run(scenario())
    # Before: WORKING for ever (and, running, exempt from the state bound), its subscriber never told.
    assert info["status"] == "FAILED"
    assert info["error"]["code"] == -42004
    assert "process running it is gone" in info["error"]["message"]
    assert "runner" not in info
    assert [event["event"] for event in told] == ["TASK_FAILED"]
    assert _task_status(next_port, kept) == "WORKING"  # its process is alive: untouched
    assert _task_status(live_port, kept) == "WORKING"
