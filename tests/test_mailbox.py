"""One mailbox bound on either engine: at most ``mailbox_size`` requests wait for a free instance, whatever
the instances are doing (serving, or restarting after a crash); one more is refused -44007 at once."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import envelope, post, run, wait_for_health

from arc_actors import Agent, Client, RestartPolicy, Server, handles

pytestmark = pytest.mark.usefixtures("engine")


class Bounded(Agent):
    agent_id = "bounded"
    concurrency = 2
    mailbox_size = 2
    restart_policy = RestartPolicy(backoff_initial_s=1.5, backoff_jitter=0)

    @handles("work.run")
    def work(self, params, context):
        if params.get("crash"):
            raise RuntimeError("crashed on purpose")
        time.sleep(params.get("sleep", 0))
        return {"served": True}


def codes(answers: list[dict]) -> list:
    return [answer["error"]["code"] if answer["error"] else "ok" for answer in answers]


def test_requests_being_served_do_not_count_against_the_mailbox(serve):
    server = Server(server_id="bounded-busy")
    server.add_agent(Bounded)
    url = serve(server).url

    async def scenario() -> tuple[list[dict], dict, dict]:
        client = Client(url)
        running = [
            asyncio.ensure_future(post(url, envelope("bounded", "work.run", {"sleep": 2}, id=i))) for i in (1, 2)
        ]
        await wait_for_health(client, "bounded", "busy", 2)
        waiting = [asyncio.ensure_future(post(url, envelope("bounded", "work.run", id=i))) for i in (3, 4)]
        await wait_for_health(client, "bounded", "mailbox", 2)
        refused = await post(url, envelope("bounded", "work.run", id=5))
        return [await answer for answer in (*running, *waiting)], refused, await client.health()

    served, refused, health = run(scenario())
    assert codes(served) == ["ok"] * 4
    assert refused["error"]["code"] == -44007
    assert refused["error"]["details"] == {"agentId": "bounded", "mailboxSize": 2, "retryAfter": 1}
    assert health["agents"]["bounded"]["mailbox"] == 0


def test_while_its_instances_restart_an_agent_still_takes_mailbox_size_requests_and_no_more(serve):
    server = Server(server_id="bounded-restarting")
    server.add_agent(Bounded, concurrency=1)
    url = serve(server).url

    async def scenario() -> tuple[dict, list[str]]:
        crashed = await post(url, envelope("bounded", "work.run", {"crash": True}, id=0))
        await wait_for_health(Client(url), "bounded", "restarts", 1)  # backing off for 1.5 s: nobody serves
        waiting = [asyncio.ensure_future(post(url, envelope("bounded", "work.run", id=i))) for i in (1, 2)]
        await wait_for_health(Client(url), "bounded", "mailbox", 2)
        refused = await post(url, envelope("bounded", "work.run", id=3))
        return crashed, codes([*(await asyncio.gather(*waiting)), refused])

    crashed, later = run(scenario())
    assert crashed["error"]["code"] == -32603
    assert later == ["ok", "ok", -44007]
