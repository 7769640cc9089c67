"""The fault admin endpoint: list, arm and clear a running server's faults over HTTP.

Off unless a server is given an admin port, and then bound to 127.0.0.1 only, on its own port, never on
the public ``/arc`` port. Bodies are JSON:

* ``GET /faults``: ``{"seed": 7, "faults": [spec, ...], "injected": {agent: {kind: count}}}``
* ``PUT /faults`` with ``{"faults": [spec, ...], "seed": 7}``: replace the armed plan; answers as GET
* ``DELETE /faults``: disarm every fault; answers as GET

A spec is the ``--fault`` text form, ``AGENT[.METHOD]:KIND=P[:ARG],...``; a bad one is answered 400 with
``{"error": "<one line>"}`` and changes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from aiohttp import web
from loguru import logger

from arc_actors.faults import SPEC_FORM, FaultInjector, FaultSpecError

ADMIN_HOST = "127.0.0.1"


class AdminPortError(OSError):
    """The admin port cannot be bound; the message names it."""


class FaultsUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``PUT /faults``."""

    faults: list[str]
    seed: int = 0


_update_decoder = msgspec.json.Decoder(FaultsUpdate)


class AdminSite:
    """The admin endpoint of one serving app, started and stopped with it (an aiohttp cleanup context).

    ``port`` 0 binds a free port; :attr:`port` is the bound one once the app has started."""

    def __init__(self, injector: FaultInjector, port: int) -> None:
        self._injector = injector
        self.port = port

    async def serve(self, _: web.Application) -> AsyncIterator[None]:
        app = web.Application()
        app.router.add_get("/faults", self.handle_get)
        app.router.add_put("/faults", self.handle_put)
        app.router.add_delete("/faults", self.handle_delete)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, ADMIN_HOST, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise AdminPortError(
                exc.errno, f"cannot listen on {ADMIN_HOST}:{self.port} for the admin endpoint: {exc.strerror or exc}"
            ) from None
        self.port = runner.addresses[0][1]
        logger.info("fault admin endpoint on http://{}:{}/faults", ADMIN_HOST, self.port)
        yield
        await runner.cleanup()

    async def handle_get(self, _: web.Request) -> web.Response:
        return self._state()

    async def handle_put(self, request: web.Request) -> web.Response:
        try:
            update = _update_decoder.decode(await request.read())
        except msgspec.DecodeError as exc:
            return _bad_request(f'{exc}; expected {{"faults": ["{SPEC_FORM}", ...], "seed": 0}}')
        try:
            self._injector.arm(update.faults, seed=update.seed)
        except FaultSpecError as exc:
            return _bad_request(str(exc))
        return self._state()

    async def handle_delete(self, _: web.Request) -> web.Response:
        self._injector.clear()
        return self._state()

    def _state(self) -> web.Response:
        plan = self._injector.plan
        return web.json_response({"seed": plan.seed, "faults": plan.specs(), "injected": self._injector.injected})


def _bad_request(problem: str) -> web.Response:
    return web.json_response({"error": problem}, status=400)
