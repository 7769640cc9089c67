"""A receiver of arc_actors task webhooks: it checks X-ARC-Signature on the exact bytes received, skips
a delivery it has seen already (retries carry the same X-ARC-Delivery), then handles the event.

Run it, then subscribe a task with callbackUrl http://127.0.0.1:9000/hooks on a server started with the
same secret (ARC_WEBHOOK_SECRET):

    ARC_WEBHOOK_SECRET=change-me python examples/webhook_receiver.py
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os

from aiohttp import web

SECRET = web.AppKey("secret", bytes)
SEEN = web.AppKey("seen", set)
NOTIFICATIONS = web.AppKey("notifications", list)


def signature_ok(secret: bytes, body: bytes, header: str) -> bool:
    """Whether ``header`` is ``sha256=`` + the base64 HMAC-SHA256 of ``body`` under ``secret``."""
    expected = "sha256=" + base64.b64encode(hmac.new(secret, body, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(expected.encode(), header.encode())


async def receive(request: web.Request) -> web.Response:
    body = await request.read()  # the bytes as sent: verify them before parsing anything
    if not signature_ok(request.app[SECRET], body, request.headers.get("X-ARC-Signature", "")):
        return web.Response(status=401, text="bad signature")
    delivery = request.headers["X-ARC-Delivery"]
    if delivery not in request.app[SEEN]:
        request.app[SEEN].add(delivery)
        notification = json.loads(body)
        request.app[NOTIFICATIONS].append(notification)  # your handling goes here
    return web.Response(status=204)


def make_app(secret: str) -> web.Application:
    app = web.Application()
    app[SECRET] = secret.encode()
    app[SEEN] = set()
    app[NOTIFICATIONS] = []
    app.router.add_post("/hooks", receive)
    return app


if __name__ == "__main__":
    web.run_app(make_app(os.environ["ARC_WEBHOOK_SECRET"]), host="127.0.0.1", port=9000)
