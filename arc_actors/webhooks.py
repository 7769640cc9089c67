"""Task subscriptions and webhooks: ``task.subscribe`` records where a managed task's events should go,
and each event is POSTed there, signed and retried, without ever holding up an agent or the gateway.

* **Subscriptions** are records of the server's store (one per task, kind ``subscriptions``), so on
  SQLite they survive a restart. ``events`` defaults to TASK_COMPLETED and TASK_FAILED; a subscription
  naming STATUS_CHANGE gets every event (arc-sdk's rule). A 410 answer makes it inactive for good.
* **Events** come from :class:`~arc_actors.tasks.TaskBook` as a task changes (see its ``task_events``)
  and are queued from whatever thread made the change: queuing is a ``call_soon_threadsafe`` onto the
  gateway's loop, never a wait. The queue is bounded; a delivery that finds it full is dropped, logged
  and counted. Pending deliveries live in memory only: a restart loses them (subscriptions stay).
* **Delivery**: a few worker coroutines on the gateway's loop share one aiohttp ``ClientSession``.
  Each delivery is one JSON body (the arc-sdk ``task.notification`` payload), encoded once and sent
  byte for byte on every attempt, with ``X-ARC-Event``, ``X-ARC-Delivery`` (one id per delivery, the
  same on its retries) and, with a secret, ``X-ARC-Signature: sha256=<base64 HMAC-SHA256 of the body>``.
  2xx is delivered; 410 deactivates the subscription; anything else (another status, a refused
  connection, the per-attempt timeout) is retried after a jittered exponential backoff, up to
  ``max_retries`` times. Redirects are not followed: a redirect could lead outside the allow list.
* **Callback URLs** are checked when subscribing: http or https only (-32602), and, unless the allow
  list is ``*``, a host inside it (-44006). A host name not listed by name must resolve, every address
  inside the list; and because a name may resolve elsewhere later (DNS rebinding), the session's
  resolver checks the addresses again on every connection and connects only to allowed ones.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import inspect
import ipaddress
import random
import re
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from loguru import logger

from arc_actors.agent import AgentSpec, Context, Handler
from arc_actors.exceptions import ARCError
from arc_actors.protocol import ARC_VERSION, TASK_EVENTS, ErrorCode
from arc_actors.store import ServingStore, new_id, record_key, utc_now

if TYPE_CHECKING:
    from aiohttp import web

    from arc_actors.tasks import Task

DEFAULT_EVENTS = ("TASK_COMPLETED", "TASK_FAILED")
"""The events of a subscription that names none (arc-sdk's default)."""
EVERY_EVENT = "STATUS_CHANGE"
"""A subscription naming this event gets every event of its task."""
SUBSCRIPTIONS_KIND = "subscriptions"
"""The store ``kind`` of a task's subscriptions (one record per task, a list)."""
SHUTDOWN_GRACE_S = 1.0
"""How long a stopping server lets queued deliveries go out before it drops them."""
OUTCOMES = ("delivered", "failed", "gone", "dropped")
"""How a delivery ends: a 2xx, retries exhausted (or refused by the allow list), a 410, not sent."""

_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


@dataclass(frozen=True)
class WebhookConfig:
    """How task events are delivered (``Server(webhooks=...)``, or the ``webhook_*`` settings).

    ``secret`` signs each body (no ``X-ARC-Signature`` without one). ``allow`` lists where callbacks may
    point: ``*`` (anywhere, the default), host names (``hooks.example.com``, ``*.example.com``),
    addresses and CIDR networks (``10.1.0.0/16``); an empty list refuses every callback. Each attempt
    may take ``timeout_s``; a failed one is retried up to ``max_retries`` times, the n-th retry after
    ``backoff_initial_s * 2**(n-1)`` seconds (at most ``backoff_max_s``) times a random 0.5 to 1.
    ``queue_size`` deliveries may wait; ``workers`` are sent at once."""

    secret: str | None = None
    allow: tuple[str, ...] = ("*",)
    timeout_s: float = 10.0
    max_retries: int = 5
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    queue_size: int = 1000
    workers: int = 4
    allow_list: AllowList = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", tuple(self.allow))
        object.__setattr__(self, "allow_list", AllowList(self.allow))
        for name in ("timeout_s", "backoff_initial_s", "backoff_max_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"webhook {name} must be > 0, got {getattr(self, name)!r}")
        for name, least in (("max_retries", 0), ("queue_size", 1), ("workers", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"webhook {name} must be >= {least}, got {getattr(self, name)!r}")


class AllowList:
    """Where callbacks may point: ``*``, host names (``*.example.com`` for its subdomains), addresses
    and CIDR networks. A bad entry is a ``ValueError`` naming it."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.anywhere = False
        self._names: set[str] = set()
        self._domains: list[str] = []
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if entry == "*":
                self.anywhere = True
            elif entry.startswith("*.") and _HOST_NAME.fullmatch(entry[2:]):
                self._domains.append(entry[1:])
            elif (network := _network(entry)) is not None:
                self._networks.append(network)
            elif _HOST_NAME.fullmatch(entry):
                self._names.add(entry)
            else:
                raise ValueError(f"webhook allow list: {raw!r} is not *, a host name, an address or a CIDR network")

    def allows_name(self, host: str) -> bool:
        """Whether ``host`` is allowed by name, whatever it resolves to."""
        host = host.lower().rstrip(".")
        return self.anywhere or host in self._names or host.endswith(tuple(self._domains))

    def allows_address(self, address: str) -> bool:
        """Whether the IP ``address`` is inside a listed network (an IPv4-mapped IPv6 one as its IPv4)."""
        if self.anywhere:
            return True
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._networks)


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_callback_url(url: str, allow: AllowList) -> None:
    """Refuse a callback URL that is not http(s) (-32602) or whose host is outside ``allow`` (-44006).
    A host name not allowed by name is resolved (a blocking call: run it off the event loop) and every
    address it has must be allowed."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise _invalid_url(url, f"callbackUrl is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise _invalid_url(url, f"callbackUrl must be an http or https URL, got scheme {parts.scheme!r}")
    if not host:
        raise _invalid_url(url, "callbackUrl has no host")
    if allow.allows_name(host):
        return
    if _is_address(host):
        addresses = [host]
    else:
        try:
            found = socket.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
        except OSError:
            raise _denied(
                url, f"callbackUrl host {host} does not resolve, so it is not inside the allow list"
            ) from None
        addresses = sorted({str(info[4][0]) for info in found})
    outside = [address for address in addresses if not allow.allows_address(address)]
    if outside or not addresses:
        where = host if outside == [host] else f"{host} ({', '.join(outside)})"
        raise _denied(url, f"callbackUrl host {where} is outside the webhook allow list")


def _invalid_url(url: str, why: str) -> ARCError:
    return ARCError(ErrorCode.INVALID_PARAMS, f"Invalid params: {why}", {"callbackUrl": url})


def _denied(url: str, why: str) -> ARCError:
    return ARCError(ErrorCode.PERMISSION_DENIED, f"Permission denied: {why}", {"callbackUrl": url})


class _AllowListResolver(AbstractResolver):
    """The delivery session's resolver: a name not allowed by name connects only to allowed addresses,
    however it resolves at that moment (DNS rebinding)."""

    def __init__(self, allow: AllowList) -> None:
        self._allow = allow
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        if self._allow.allows_name(host):
            return found
        allowed = [result for result in found if self._allow.allows_address(result["host"])]
        if not allowed:
            raise OSError(f"{host} resolves only to addresses outside the webhook allow list")
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


class Subscription(msgspec.Struct, rename="camel", kw_only=True):
    """One ``task.subscribe``, as it is stored and answered."""

    subscription_id: str
    task_id: str
    callback_url: str
    events: list[str]
    created_at: str
    active: bool = True

    def wants(self, event: str) -> bool:
        return self.active and (event in self.events or EVERY_EVENT in self.events)


@dataclass(frozen=True)
class _Delivery:
    agent_id: str
    task_id: str
    subscription_id: str
    url: str
    event: str
    body: bytes
    delivery_id: str = field(default_factory=lambda: str(uuid.uuid4()))


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(list[Subscription])


class Webhooks:
    """The subscriptions and webhook deliveries of one server: subscriptions in its store, deliveries
    on its gateway's loop while it serves (:meth:`serve`)."""

    def __init__(self, config: WebhookConfig, store: ServingStore) -> None:
        self.config = config
        self._serving = store
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Delivery] | None = None
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._counts_lock = threading.Lock()

    def counts(self) -> dict[str, int]:
        """Deliveries ended so far, by outcome (:data:`OUTCOMES`)."""
        with self._counts_lock:
            return dict(self._counts)

    # -- task.subscribe, off the event loop --

    def check(self, params: dict[str, Any]) -> list[str]:
        """The events of a ``task.subscribe`` whose params are acceptable; an ARC error otherwise.
        May resolve the callback's host name: call it off the event loop."""
        events = params.get("events") or list(DEFAULT_EVENTS)
        unknown = [event for event in events if event not in TASK_EVENTS]
        if unknown:
            raise ARCError(
                ErrorCode.INVALID_PARAMS,
                f"Invalid params: unknown task events {', '.join(map(str, unknown))}; "
                f"events are {', '.join(TASK_EVENTS)}",
                {"events": unknown},
            )
        check_callback_url(params["callbackUrl"], self.config.allow_list)
        return list(dict.fromkeys(events))

    def record(self, task: Task, callback_url: str, events: list[str]) -> dict[str, Any]:
        """Keep a new subscription to ``task``; returns the ARC result ``{"type": "subscription", ...}``."""
        subscription = Subscription(
            subscription_id=new_id("sub"),
            task_id=task.task_id,
            callback_url=callback_url,
            events=events,
            created_at=utc_now(),
        )
        with self._serving.transaction():
            subscriptions = self.subscriptions(task.agent_id, task.task_id)
            subscriptions.append(subscription)
            self._save(task.agent_id, task.task_id, subscriptions)
        logger.bind(agent_id=task.agent_id).info(
            "task {} subscribed: {} for {}", task.task_id, callback_url, ", ".join(events)
        )
        return {"type": "subscription", "subscription": msgspec.to_builtins(subscription)}

    def subscriptions(self, agent_id: str, task_id: str) -> list[Subscription]:
        """The subscriptions of a task, inactive ones included."""
        raw = self._serving.store.load(SUBSCRIPTIONS_KIND, record_key(agent_id, task_id))
        return [] if raw is None else _decoder.decode(raw)

    def _save(self, agent_id: str, task_id: str, subscriptions: list[Subscription]) -> None:
        self._serving.store.save(SUBSCRIPTIONS_KIND, record_key(agent_id, task_id), _encoder.encode(subscriptions))

    def _deactivate(self, delivery: _Delivery) -> None:
        with self._serving.transaction():
            subscriptions = self.subscriptions(delivery.agent_id, delivery.task_id)
            for subscription in subscriptions:
                if subscription.subscription_id == delivery.subscription_id:
                    subscription.active = False
            self._save(delivery.agent_id, delivery.task_id, subscriptions)

    # -- events, from any thread --

    def publish(self, task: Task, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Queue one delivery per event and active subscription of ``task`` that wants it; never waits."""
        if not events:
            return
        subscriptions = self.subscriptions(task.agent_id, task.task_id)
        for event, data in events:
            for subscription in subscriptions:
                if subscription.wants(event):
                    self._offer(_delivery(task, subscription, event, data))

    def _offer(self, delivery: _Delivery) -> None:
        loop = self._loop
        try:
            if loop is None:
                raise RuntimeError("not serving")
            loop.call_soon_threadsafe(self._enqueue, delivery)
        except RuntimeError:
            self._drop(delivery, "the server is not serving")

    def _enqueue(self, delivery: _Delivery) -> None:
        if self._queue is None:
            self._drop(delivery, "the server is not serving")
            return
        try:
            self._queue.put_nowait(delivery)
        except asyncio.QueueFull:
            self._drop(delivery, f"the delivery queue is full ({self.config.queue_size})")

    def _drop(self, delivery: _Delivery, why: str) -> None:
        self._count("dropped")
        logger.bind(agent_id=delivery.agent_id).warning(
            "webhook {} of task {} to {} dropped: {}", delivery.event, delivery.task_id, delivery.url, why
        )

    def _count(self, outcome: str) -> None:
        with self._counts_lock:
            self._counts[outcome] += 1

    # -- delivery, on the gateway's loop --

    async def serve(self, _: web.Application) -> AsyncIterator[None]:
        """An aiohttp cleanup context: the shared session and the workers while the app runs; at its
        end, up to :data:`SHUTDOWN_GRACE_S` for what is queued, then the rest is dropped."""
        self._queue = asyncio.Queue(self.config.queue_size)
        connector = aiohttp.TCPConnector(resolver=_AllowListResolver(self.config.allow_list))
        session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))
        workers = [asyncio.create_task(self._work(session)) for _ in range(self.config.workers)]
        self._loop = asyncio.get_running_loop()
        try:
            yield
        finally:
            self._loop = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), SHUTDOWN_GRACE_S)
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            queue, self._queue = self._queue, None
            while not queue.empty():
                self._drop(queue.get_nowait(), "the server stopped")
            await session.close()

    async def _work(self, session: aiohttp.ClientSession) -> None:
        while True:
            delivery = await self._queue.get()
            try:
                outcome = await self._deliver(session, delivery)
            except asyncio.CancelledError:
                self._drop(delivery, "the server stopped")
                raise
            except Exception:  # noqa: BLE001 - one delivery's bug must not end the worker
                logger.bind(agent_id=delivery.agent_id).exception("webhook {} failed", delivery.delivery_id)
                outcome = "failed"
            try:
                self._count(outcome)
            finally:
                self._queue.task_done()

    async def _deliver(self, session: aiohttp.ClientSession, delivery: _Delivery) -> str:
        """Send one delivery, retrying as configured; returns its outcome."""
        log = logger.bind(agent_id=delivery.agent_id)
        host = urlsplit(delivery.url).hostname or ""
        if _is_address(host) and not self.config.allow_list.allows_address(host):
            log.warning("webhook to {} not sent: outside the webhook allow list", delivery.url)
            return "failed"
        headers = self._headers(delivery)
        attempts = self.config.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                async with session.post(
                    delivery.url, data=delivery.body, headers=headers, allow_redirects=False
                ) as reply:
                    status = reply.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if 200 <= status < 300:
                    log.debug("webhook {} {} delivered to {}", delivery.event, delivery.delivery_id, delivery.url)
                    return "delivered"
                if status == 410:
                    await asyncio.get_running_loop().run_in_executor(None, self._deactivate, delivery)
                    log.info("subscription {} deactivated: {} answered 410", delivery.subscription_id, delivery.url)
                    return "gone"
                why = f"HTTP {status}"
            log.warning(
                "webhook {} {} to {} failed (attempt {}/{}): {}",
                delivery.event,
                delivery.delivery_id,
                delivery.url,
                attempt,
                attempts,
                why,
            )
            if attempt < attempts:
                await asyncio.sleep(self._backoff_s(attempt))
        return "failed"

    def _headers(self, delivery: _Delivery) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "arc-actors-webhooks",
            "X-ARC-Event": delivery.event,
            "X-ARC-Delivery": delivery.delivery_id,
        }
        if self.config.secret is not None:
            headers["X-ARC-Signature"] = sign(self.config.secret, delivery.body)
        return headers

    def _backoff_s(self, retry: int) -> float:
        delay = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (retry - 1))
        return delay * random.uniform(0.5, 1.0)


def sign(secret: str, body: bytes) -> str:
    """The ``X-ARC-Signature`` of ``body``: ``sha256=`` and the base64 HMAC-SHA256 (ARC's reference form)."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return "sha256=" + base64.b64encode(digest).decode()


def _delivery(task: Task, subscription: Subscription, event: str, data: dict[str, Any]) -> _Delivery:
    payload = {
        "arc": ARC_VERSION,
        "method": "task.notification",
        "requestAgent": task.agent_id,
        "taskId": task.task_id,
        "subscriptionId": subscription.subscription_id,
        "event": event,
        "timestamp": utc_now(),
        "data": data,
    }
    return _Delivery(
        task.agent_id,
        task.task_id,
        subscription.subscription_id,
        subscription.callback_url,
        event,
        _encoder.encode(payload),
    )


def accept_notifications(spec: AgentSpec) -> AgentSpec:
    """``spec`` answering ``task.notification`` when it has managed tasks (``task.create``) or a
    ``task_notification`` of its own: the event is checked (-32602 for an unknown one), the
    notification logged and handed to the agent's own handler, if any. The answer is that handler's
    result when it is a dict, else ``{"success": true}``. Other agents are left as they are."""
    if "task.create" not in spec.methods and "task.notification" not in spec.methods:
        return spec
    methods = tuple(dict.fromkeys((*spec.methods, "task.notification")))
    return spec.map_handlers(_wrap_notification, methods)


def _wrap_notification(method: str, handler: Handler | None) -> Handler:
    if method != "task.notification":
        return handler

    async def accept(params: dict[str, Any], context: Context) -> dict[str, Any]:
        if params["event"] not in TASK_EVENTS:
            raise ARCError(
                ErrorCode.INVALID_PARAMS,
                f"Invalid params: unknown task event {params['event']!r}; events are {', '.join(TASK_EVENTS)}",
                {"event": params["event"]},
            )
        logger.bind(agent_id=context.target_agent, trace_id=context.trace_id).info(
            "task.notification {} for task {} from {}", params["event"], params["taskId"], context.request_agent
        )
        answer = None if handler is None else handler(params, context)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer if isinstance(answer, dict) else {"success": True}

    return accept
