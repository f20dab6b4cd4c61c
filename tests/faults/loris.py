"""Slow-loris clients, as a process of their own (`python -m tests.faults.loris PORT CONNECTIONS SECONDS`), so
that their work does not slow the measuring client down.

Each connection trickles one seed-network request: the request line, then one header line at a time, then the
body in 16-byte pieces, spread evenly over SECONDS; then it reads the answer, which must be a correct 200.
Prints one JSON line: {"sent", "answered", "correct", "statuses"}.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

import orjson

from tests.faults.traffic import DROPPED, Call, judge, network_call, read_response

PIECE = 16


def pieces(call: Call, request_id: str) -> list[bytes]:
    head = call.head + f"X-Request-ID: {request_id}\r\n\r\n".encode()
    lines = [line + b"\r\n" for line in head.split(b"\r\n")[:-1]]
    return lines + [call.body[i : i + PIECE] for i in range(0, len(call.body), PIECE)]


async def slow_client(port: int, number: int, seconds: float, statuses: Counter[int], correct: list[bool]) -> None:
    call = network_call(number % 16)
    parts = pieces(call, f"loris-{number}")
    pause = seconds / len(parts)
    await asyncio.sleep(pause * (number % 10) / 10)  # not all in step
    status = DROPPED
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(pause)
        status, headers, body = await asyncio.wait_for(read_response(reader), 60)
        correct.append(judge(call, status, headers, body))
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
        correct.append(False)
    finally:
        statuses[status] += 1
        if writer is not None:
            writer.close()


async def main(port: int, connections: int, seconds: float) -> dict[str, object]:
    statuses: Counter[int] = Counter()
    correct: list[bool] = []
    await asyncio.gather(*(slow_client(port, number, seconds, statuses, correct) for number in range(connections)))
    return {
        "sent": connections,
        "answered": sum(count for status, count in statuses.items() if status >= 100),
        "correct": sum(correct),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
    }


if __name__ == "__main__":
    port, connections, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    sys.stdout.write(orjson.dumps(asyncio.run(main(port, connections, seconds))).decode() + "\n")
