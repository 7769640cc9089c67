"""The scale-out recipe, run locally: one Ray head, two gateways on two ports, one shared agent.

1. ``ray start --head`` (2 CPUs, 100 MB object store, no dashboard, in a temporary directory);
2. two ``python -m arc_actors serve examples/scale_out.py --engine ray --ray-address ADDR`` on ports
   8001 and 8002, sharing one SQLite state file (``ARC_STATE_PATH``);
3. ``count.next`` through each gateway in turn: one counter, one worker process; a chat started
   through one gateway and ended through the other (its record is in the shared file);
4. the agent's worker process is killed; the next request through the other gateway meets its
   replacement, and ``/health`` of each gateway counts the restart it saw;
5. everything stopped: the gateways with SIGTERM, then the head (``ray start --block`` ends the
   processes it started when interrupted; ``ray stop`` would end every Ray on the machine).

Run:  python examples/scale_out_demo.py   (needs pip install 'arc-actors[ray]')
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTS = (8001, 8002)
GCS_PORT = 6390


def arc(port: int, method: str, request_id: int, params: dict | None = None) -> dict:
    body = {"arc": "1.0", "id": request_id, "method": method, "requestAgent": "demo"}
    body |= {"targetAgent": "counter-agent", "params": params or {}}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/arc", json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
        return json.loads(reply.read())["agents"]["counter-agent"]


def wait_healthy(port: int, deadline_s: float = 90) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if health(port)["status"] == "running":
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"gateway on {port} did not come up")


def wait_listening(port: int, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(1)  # the head's other services follow its GCS
                return
        time.sleep(0.2)
    raise SystemExit(f"the Ray head did not listen on {port}")


def main() -> None:
    address = f"127.0.0.1:{GCS_PORT}"
    temp_dir = tempfile.mkdtemp(prefix="arc-ray-")
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    head = ["start", "--head", "--block", f"--port={GCS_PORT}", "--num-cpus=2"]
    head += ["--include-dashboard=false"]
    head += ["--object-store-memory=100000000", f"--temp-dir={temp_dir}"]
    cluster = subprocess.Popen([*ray, *head], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gateways = []
    try:
        wait_listening(GCS_PORT)
        for port in PORTS:
            argv = [sys.executable, "-m", "arc_actors", "serve", "examples/scale_out.py", "--engine", "ray"]
            argv += ["--ray-address", address, "--port", str(port), "--log-level", "WARNING"]
            # `ray start` turns Ray's token authentication on: the gateways present the token it wrote.
            env = {**os.environ, "RAY_AUTH_MODE": "token", "ARC_STATE_PATH": str(Path(temp_dir) / "state.db")}
            gateways.append(subprocess.Popen(argv, cwd=ROOT, env=env))
        for port in PORTS:
            wait_healthy(port)
        for request_id in range(4):
            port = PORTS[request_id % 2]
            print(f"via :{port}  count.next -> {arc(port, 'count.next', request_id)['result']}")
        said = {"role": "user", "parts": [{"type": "text", "content": "hi"}]}
        hello = {"chatId": "demo-chat", "initialMessage": said}
        started = arc(PORTS[0], "chat.start", 10, hello)["result"]["chat"]
        ended = arc(PORTS[1], "chat.end", 11, {"chatId": "demo-chat"})["result"]["chat"]
        print(f"via :{PORTS[0]}  chat.start -> {started['status']}; via :{PORTS[1]}  chat.end -> {ended['status']}")
        print("killing the agent's worker process ...")
        pid = arc(PORTS[0], "count.next", 4)["result"]["pid"]
        os.kill(pid, signal.SIGKILL)
        time.sleep(2)
        print(f"via :{PORTS[1]}  count.next -> {arc(PORTS[1], 'count.next', 5)}")
        for port in PORTS:
            print(f"/health of :{port}: {health(port)}")
    finally:
        for gateway in gateways:
            gateway.send_signal(signal.SIGTERM)
        for gateway in gateways:
            gateway.wait(30)
        cluster.send_signal(signal.SIGINT)
        cluster.wait(60)


if __name__ == "__main__":
    main()
