"""arc_actors: many ARC agents in one Python process, each agent an actor with its own mailbox.

The public API is what this module exports; everything else is importable but not promised.
"""

import loguru

from arc_actors.agent import Agent, Context, handles
from arc_actors.auth import AuthConfig, Identity, JWTConfig, StaticToken
from arc_actors.chats import Chat
from arc_actors.client import Client, Response
from arc_actors.exceptions import ARCError, ARCException
from arc_actors.faults import Fault, FaultPlan
from arc_actors.protocol import ErrorCode
from arc_actors.server import Server
from arc_actors.store import MemoryStore, SQLiteStore, Store
from arc_actors.supervisor import RestartPolicy
from arc_actors.tasks import InputRequired, Task, TaskCancelled, TaskHandle
from arc_actors.webhooks import WebhookConfig

__version__ = "0.1.0"

# A library logs nothing until the application asks (loguru's advice): Server.run and the CLI do, through
# arc_actors.logs.configure_logging; so does loguru.logger.enable("arc_actors").
loguru.logger.disable("arc_actors")

__all__ = [
    "ARCError",
    "ARCException",
    "Agent",
    "AuthConfig",
    "Chat",
    "Client",
    "Context",
    "ErrorCode",
    "Fault",
    "FaultPlan",
    "Identity",
    "InputRequired",
    "JWTConfig",
    "MemoryStore",
    "Response",
    "RestartPolicy",
    "SQLiteStore",
    "Server",
    "StaticToken",
    "Store",
    "Task",
    "TaskCancelled",
    "TaskHandle",
    "WebhookConfig",
    "handles",
]
