"""A worker process driven line by line: ``python tests/peers.py JSON`` (for coherence tests).

Each peer opens its own store, as another app worker would, then reads one JSON command
per line on stdin and answers with one JSON line per command on stdout (``id`` echoed):

- ``{"op": "ready"}``: once the near-cache is kept coherent (the listener connected);
- ``{"op": "search", "query": q, "refresh": false}``: source and ``fetched_at``;
- ``{"op": "search_bg", "query": q}``: answers ``started`` once the fetcher was called,
  then a second line ``done`` with the result, when it lands;
- ``{"op": "slow", "seconds": s}``: the next fetches take that long;
- ``{"op": "invalidate", "query": q}``, ``{"op": "flush"}``, ``{"op": "quit"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import kuya_store as ks


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def main(config: dict[str, Any]) -> None:
    latency = [0.0]
    started: list[asyncio.Future[None]] = []

    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        for waiter in started:
            if not waiter.done():
                waiter.set_result(None)
        await asyncio.sleep(latency[0])
        return ks.FetchResult(
            listings=[
                ks.Listing(item_id=f"I{i}", title=f"{request.query} #{i}", price="9.99", sold=True)
                for i in range(5)
            ]
        )

    async with ks.CompsStore(fetchers={"sold": fetch}, **config) as store:
        near = store._near
        background: set[asyncio.Task[None]] = set()

        def answer(command: dict[str, Any], result: ks.CompsResult, **extra: Any) -> None:
            _say(
                {
                    "id": command["id"],
                    "source": result.source.value,
                    "fetched_at": result.fetched_at.isoformat(),
                    **extra,
                }
            )

        async def in_background(command: dict[str, Any]) -> None:
            result = await store.comps.search(command["query"])
            answer(command, result, done=True)

        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            op = command["op"]
            if op == "ready":
                for _ in range(200):
                    if near is not None and near.coherent:
                        break
                    await asyncio.sleep(0.05)
                _say({"id": command["id"], "coherent": near is not None and near.coherent})
            elif op == "search":
                result = await store.comps.search(command["query"], refresh=command["refresh"])
                answer(command, result)
            elif op == "search_bg":
                waiter = asyncio.get_running_loop().create_future()
                started.append(waiter)
                task = asyncio.create_task(in_background(command))
                background.add(task)
                task.add_done_callback(background.discard)
                await waiter
                _say({"id": command["id"], "started": True})
            elif op == "slow":
                latency[0] = float(command["seconds"])
                _say({"id": command["id"]})
            elif op == "invalidate":
                report = await store.comps.invalidate(command["query"], "sold")
                _say({"id": command["id"], "complete": report.complete})
            elif op == "flush":
                _say({"id": command["id"], "flushed": await store.flush()})
            elif op == "quit":
                break
        if background:
            await asyncio.wait(background)
    _say({"id": "bye"})


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
