"""The baseline a user would otherwise write: a bare aiohttp server that decodes the ARC envelope with
msgspec and answers chat.start with the same result as the benchmark's agent, with no actor hop.

``python benchmarks/bare_server.py PORT`` serves ``POST /arc`` and ``GET /health`` on 127.0.0.1, on the
same event loop kind as ``Server.run`` (uvloop where it is installed).
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec
from aiohttp import web
from apps import CHAT_RESULT

from arc_actors.server import new_event_loop  # the loop Server.run uses: uvloop where it is installed


class Request(msgspec.Struct, rename="camel"):
    arc: str
    id: str | int
    method: str
    request_agent: str
    target_agent: str
    params: dict[str, Any]
    trace_id: str | None = None


class Response(msgspec.Struct, rename="camel", kw_only=True):
    arc: str = "1.0"
    id: str | int
    response_agent: str
    target_agent: str
    result: Any = None
    error: Any = None
    trace_id: str | msgspec.UnsetType | None = msgspec.UNSET


decoder = msgspec.json.Decoder(Request)
encoder = msgspec.json.Encoder()


async def handle_arc(http_request: web.Request) -> web.Response:
    request = decoder.decode(await http_request.read())
    response = Response(
        id=request.id,
        response_agent=request.target_agent,
        target_agent=request.request_agent,
        result=CHAT_RESULT,
        trace_id=msgspec.UNSET if request.trace_id is None else request.trace_id,
    )
    return web.Response(body=encoder.encode(response), content_type="application/arc+json")


async def handle_health(_: web.Request) -> web.Response:
    return web.json_response({"status": "healthy"})


def main(port: int) -> None:
    app = web.Application()
    app.router.add_post("/arc", handle_arc)
    app.router.add_get("/health", handle_health)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=new_event_loop())


if __name__ == "__main__":
    main(int(sys.argv[1]))
