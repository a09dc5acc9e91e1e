"""Egress pacing: SMS per second that a provider accepts from the real Twilio adapter
(channels/twilio.py on the twilio SDK), sent by --threads worker threads over --senders long
codes, against a local Twilio stand-in that enforces Twilio's long-code limit of 1 message per
second per sender and answers 429 (Twilio error 20429) past it (tests/channels/servers.py,
run in a process of its own so the senders' threads never hold up its clock).

Each thread does what `engine.sending.send_delivery` does around the provider call: it takes
the next message (round robin over the senders, like a burst of due SMS), reserves a slot with
the engine's RedisPacer at `rate_for("sms", sender, rates) * pace_headroom` (rates from
workflows/sending.yml, else the built-in defaults), then calls `channel.send`. A slot further
away than the policy's pace_timeout raises PacingTimeout, which the engine turns into a
re-planned delivery.

Figure: accepted sends per second beside the theoretical maximum, limit x senders, counted over
--seconds from the first slot. Goal: at least 95% of it, and no send over the limit (the count
of 429 answers, shown beside all attempts: 0). --headroom overrides the engine's margin under
the limit (SendPolicy.pace_headroom, 0.95) to try another: 1.0 paces exactly at the limit.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import Any

import redis

from bench.common import Figure, report
from bench.reaction import DEFAULT_REDIS, fresh_redis
from channels.base import SmsMessage
from channels.twilio import TwilioChannel
from engine.delivery.pacing import PacingTimeout, RedisPacer, rate_for
from engine.errors import ChannelError
from engine.workflow.sending_rules import load_policy
from engine.workflow.spec import SendPolicy
from tests.channels.servers import TwilioServer

ROOT = Path(__file__).resolve().parent.parent
FIRST_SENDER = 14155550100  # +1 415 555 0100, +1 415 555 0101, ...: US long codes
ACCOUNT_SID, AUTH_TOKEN = "AC" + "0" * 32, "bench-auth-token"
BODY = "Hi Ada, got 10 minutes this week for a quick demo? Reply STOP to opt out."


@dataclass
class Tally:
    """What the threads saw: accepted sends, 429s, other failures, slots out of reach."""

    sent: int = 0
    over_limit: int = 0
    failed: int = 0
    paced: int = 0
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str, error: str | None = None) -> None:
        """Add one outcome (a field name), keeping the first few unexpected errors."""
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)
            if error is not None and len(self.errors) < 5:
                self.errors.append(error)


def senders(count: int) -> list[str]:
    """`count` distinct E.164 long codes."""
    return [f"+{FIRST_SENDER + i}" for i in range(count)]


def twilio_channel(url: str) -> TwilioChannel:
    """The adapter as the engine builds it from the environment, pointed at the stand-in."""
    environ = {k: v for k, v in os.environ.items() if k not in ("TWILIO_EDGE", "TWILIO_REGION")}
    return TwilioChannel.from_env(
        environ
        | {
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "NURTURE_TWILIO_BASE_URL": url,
        }
    )


def send_loop(
    channel: TwilioChannel,
    pacer: RedisPacer,
    policy: SendPolicy,
    queue: itertools.cycle[str],
    queue_lock: threading.Lock,
    headroom: float,
    deadline: float,
    tally: Tally,
) -> None:
    """One worker thread: next message, paced slot, provider call; until slots pass `deadline`."""
    for number in itertools.count():
        if time.monotonic() >= deadline:
            return
        with queue_lock:
            sender = next(queue)
        rate = rate_for("sms", sender, policy.rates) * headroom
        try:
            pacer.acquire(f"sms:{sender}", rate, timeout=policy.pace_timeout)
        except PacingTimeout as error:
            tally.count("paced")  # the engine re-plans it; this thread idles as a worker would
            time.sleep(min(error.retry_after, max(0.0, deadline - time.monotonic())))
            continue
        if time.monotonic() >= deadline:
            return  # the slot came after the measurement: not sent
        message = SmsMessage(
            delivery_id=f"{threading.get_ident()}-{number}",
            to_phone=f"+1415556{number % 10_000:04d}",
            from_phone=sender,
            body=BODY,
        )
        try:
            channel.send(message)
        except ChannelError as error:
            if error.status == 429:
                tally.count("over_limit")
            else:
                tally.count("failed", str(error))
            continue
        tally.count("sent")


def serve_twilio(limit: float, urls: Queue[Any], stop: ProcessEvent) -> None:
    """The stand-in in its own process, so the senders' threads never delay its clock."""
    with TwilioServer(ACCOUNT_SID, AUTH_TOKEN, rate_limit=limit) as server:
        urls.put(server.url)
        stop.wait()
        urls.put((len(server.accepted), len(server.requests)))


@contextmanager
def twilio_process(limit: float) -> Iterator[tuple[str, list[int]]]:
    """Run the stand-in in a child process; yield its URL and, after, [accepted, requests]."""
    spawn = multiprocessing.get_context("spawn")
    urls: Queue[Any] = spawn.Queue()
    stop = spawn.Event()
    process = spawn.Process(target=serve_twilio, args=(limit, urls, stop), name="twilio")
    process.start()
    counts: list[int] = []
    try:
        yield urls.get(timeout=60), counts
    finally:
        stop.set()
        counts.extend(urls.get(timeout=10))
        process.join(10)


def main() -> None:
    """Run the threads against the rate-limited stand-in and report the accepted rate."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--senders", type=int, default=5, help="long codes sending at once")
    parser.add_argument("--threads", type=int, default=8, help="worker threads sharing them")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the measurement")
    parser.add_argument(
        "--limit", type=float, default=1.0, help="provider limit, messages/s per sender"
    )
    parser.add_argument(
        "--headroom",
        type=float,
        default=None,
        help="pacer rate multiplier; default: the engine's SendPolicy.pace_headroom",
    )
    parser.add_argument("--redis", default=os.environ.get("NURTURE_BENCH_REDIS_URL", DEFAULT_REDIS))
    args = parser.parse_args()
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"

    policy = load_policy(ROOT / "workflows").send
    if args.headroom is None:
        args.headroom = policy.pace_headroom
    numbers = senders(args.senders)
    fresh_redis(args.redis)
    client = redis.Redis.from_url(args.redis)
    tally = Tally()
    with twilio_process(args.limit) as (url, server_counts):
        channel = twilio_channel(url)
        queue, queue_lock = itertools.cycle(numbers), threading.Lock()
        deadline = time.monotonic() + args.seconds
        threads = [
            threading.Thread(
                target=send_loop,
                args=(channel, RedisPacer(client), policy, queue, queue_lock, args.headroom),
                kwargs={"deadline": deadline, "tally": tally},
            )
            for _ in range(args.threads)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        channel.close()
    client.close()

    rates = ", ".join(f"{r:g}" for r in sorted({rate_for("sms", n, policy.rates) for n in numbers}))
    accepted, requests = server_counts
    print(
        f"{args.senders} senders paced at {rates}/s x {args.headroom:g} by {args.threads} threads "
        f"for {args.seconds:g}s against a limit of {args.limit:g}/s; the stand-in accepted "
        f"{accepted} of {requests} requests; {tally.paced} slots out of reach (re-planned), "
        f"{tally.failed} other failures"
        + (f" {tally.errors}" if tally.errors else "")
        + f"; machine load average {os.getloadavg()[0]:.1f}"
    )
    attempts = tally.sent + tally.over_limit + tally.failed
    report(
        "egress",
        [
            Figure(
                "accepted SMS per second",
                tally.sent / args.seconds,
                args.limit * args.senders,
                "sends/s",
                "ratio >= 0.95",
            ),
            Figure("sends over the limit (429)", tally.over_limit, attempts, "sends", "0"),
        ],
    )


if __name__ == "__main__":
    main()
