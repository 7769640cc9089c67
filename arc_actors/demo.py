"""The agents ``python -m arc_actors serve`` runs when given no APP: the three agents of the
"Single Server Deployment" page, replying as its first listing does, written as actor subclasses.
They return only their reply text: the runtime manages their chats (ids, status, history).
A fourth, ``report-agent``, shows managed tasks: progress, an artifact, and a question when the
request names no period."""

from __future__ import annotations

import re
from typing import Any

from arc_actors.agent import Agent, Context
from arc_actors.server import Server
from arc_actors.supervisor import RestartPolicy
from arc_actors.tasks import InputRequired


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


class ReportAgent(Agent):
    """Managed tasks: a report for a quarter (``2026-Q1``), asked for when the request names none."""

    agent_id = "report-agent"

    def task_create(self, params: dict[str, Any], context: Context) -> str:
        period = re.search(r"\b\d{4}-Q[1-4]\b", first_text(params["initialMessage"]))
        if period is None:
            raise InputRequired("Which quarter should the report cover? (e.g. 2026-Q1)")
        return self._report(period.group(), context)

    def task_send(self, params: dict[str, Any], context: Context) -> str:
        return self._report(first_text(params["message"]).strip(), context)

    def _report(self, period: str, context: Context) -> str:
        context.task.progress(0.5)
        artifact = {"name": f"report-{period}", "parts": [{"type": "DataPart", "content": {"period": period}}]}
        context.task.add_artifact(artifact)
        context.task.progress(1.0)
        return f"Report for {period} ready."


DEMO_CLASSES: tuple[type[Agent], ...] = (FinanceAgent, HRAgent, SupportAgent, ReportAgent)
DEMO_AGENTS = tuple(agent_class.agent_id for agent_class in DEMO_CLASSES)


def build_server(restart_policy: RestartPolicy | None = None) -> Server:
    """A fresh server with the demo agents, supervised by ``restart_policy`` (default: the server's)."""
    server = Server(server_id="multi-agent-server", description="arc_actors demo agents", restart_policy=restart_policy)
    for agent_class in DEMO_CLASSES:
        server.add_agent(agent_class)
    return server
