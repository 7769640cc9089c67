"""The agents ``python -m arc_actors serve`` runs when given no APP: the three agents of the
"Single Server Deployment" page, replying as its first listing does, written as actor subclasses.
They return only their reply text: the runtime manages their chats (ids, status, history)."""

from __future__ import annotations

from typing import Any

from arc_actors.agent import Agent, Context
from arc_actors.server import Server
from arc_actors.supervisor import RestartPolicy


def first_text(message: dict[str, Any]) -> str:
    """The content of a message's first part."""
    return message["parts"][0]["content"]


class KeywordAgent(Agent):
    """Answers a chat's first message by the first keyword it contains, and echoes follow-ups."""

    keywords: dict[str, str] = {}
    fallback = ""
    follow_up = "{}"

    async def chat_start(self, params: dict[str, Any], context: Context) -> str:
        text = first_text(params["initialMessage"]).lower()
        return next((answer for word, answer in self.keywords.items() if word in text), self.fallback)

    async def chat_message(self, params: dict[str, Any], context: Context) -> str:
        return self.follow_up.format(first_text(params["message"]))


class FinanceAgent(KeywordAgent):
    agent_id = "finance-agent"
    keywords = {
        "invoice": "I can help with invoice inquiries. Please provide invoice number.",
        "payment": "I can assist with payment processing. What's your payment ID?",
    }
    fallback = "I handle invoices, payments, and budgets. How can I help?"
    follow_up = "Processing your request: {}"


class HRAgent(KeywordAgent):
    agent_id = "hr-agent"
    keywords = {
        "salary": "I can help with salary inquiries. Please provide your employee ID.",
        "benefits": "I can explain our benefits package. What would you like to know?",
    }
    fallback = "I handle HR matters: salary, benefits, leave. How can I assist?"
    follow_up = "Let me check that for you: {}"


class SupportAgent(KeywordAgent):
    agent_id = "support-agent"
    fallback = "Hi! I'm here to help with general support. What do you need?"
    follow_up = "I understand your concern: {}. Let me help you."


def build_server(restart_policy: RestartPolicy | None = None) -> Server:
    """A fresh server with the three demo agents, supervised by ``restart_policy`` (default: the server's)."""
    server = Server(server_id="multi-agent-server", description="arc_actors demo agents", restart_policy=restart_policy)
    for agent_class in (FinanceAgent, HRAgent, SupportAgent):
        server.add_agent(agent_class)
    return server
