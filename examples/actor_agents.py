"""The seed's three agents written as actor subclasses.

Each agent is an :class:`arc_actors.Agent`; the runtime runs each instance in its own actor (own
thread, own mailbox), so the per-agent state below needs no locks: one message at a time. Handlers
return only their reply: the runtime manages the chats (ids, status, timestamps, history).

Run:  python -m arc_actors serve examples/actor_agents.py
"""

from __future__ import annotations

from typing import Any

from arc_actors import Agent, ARCError, Context, ErrorCode, Server


class ChatAgent(Agent):
    """Answers chat.start with a greeting and chat.message with a canned reply, counting its chats."""

    greeting = ""
    reply = ""

    def on_start(self) -> None:
        self.chats_started = 0

    async def chat_start(self, params: dict[str, Any], context: Context) -> str:
        self.chats_started += 1
        return self.greeting

    async def chat_message(self, params: dict[str, Any], context: Context) -> str:
        if not params["message"].get("parts"):
            raise ARCError(
                ErrorCode.INVALID_CHAT_MESSAGE, "A message needs at least one part", {"chatId": params["chatId"]}
            )
        return self.reply


class FinanceAgent(ChatAgent):
    agent_id = "finance-agent"
    greeting = "Finance agent ready"
    reply = "Processing finance request"


class HRAgent(ChatAgent):
    agent_id = "hr-agent"
    greeting = "HR agent ready"
    reply = "Processing HR request"


class SupportAgent(ChatAgent):
    agent_id = "support-agent"
    greeting = "Support agent ready"
    reply = "Processing support request"


server = Server(server_id="multi-agent-server")
for agent_class in (FinanceAgent, HRAgent, SupportAgent):
    server.add_agent(agent_class)

if __name__ == "__main__":
    server.run(host="127.0.0.1", port=8000)
