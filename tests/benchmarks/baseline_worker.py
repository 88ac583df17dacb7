"""The consumer you would write yourself in an afternoon: aiokafka, ffmpeg CLI, DashScope SDK.

For each recording event: convert the file with ``ffmpeg`` to 16 kHz mono FLAC (the API takes
10 MB of base64 at most, so WAV will not do for long calls), send it as a ``data:`` URI with
``dashscope.MultiModalConversation.call(stream=True, incremental_output=True)``, publish each
delta as a partial event and the whole text as a final event, then commit the offset.

- ``--threads 1``: one recording at a time, the obvious loop.
- ``--threads N``: up to N recordings at once, the SDK's blocking calls in a thread pool, each
  offset committed when its recording is done. That commits past recordings still in flight
  (what faust-streaming #606 does too): a crash loses them. The benchmark does not crash it.

The SDK blocks, so it runs in the pool and hands deltas back to the event loop. No retries, no
failed events, no chunking: what people start with. Benchmark-only extras: ``started_at`` in
the final event (when the loop took the recording), so the benchmark can tell the recording's
own time from its time in the queue, and ``audio_seconds`` from the API's billed seconds.

    python -m tests.benchmarks.baseline_worker --bootstrap HOST:PORT --topic T \\
        --partial-topic P --final-topic F --group G --asr-url http://HOST:PORT [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import json
import time
from collections.abc import Callable
from urllib.parse import unquote, urlparse

import dashscope
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord


async def to_flac(path: str) -> bytes:
    """Decode, downmix and resample with the ffmpeg CLI."""
    ffmpeg = await asyncio.create_subprocess_exec(
        *("ffmpeg", "-nostdin", "-v", "error", "-i", path),
        *("-ac", "1", "-ar", "16000", "-f", "flac", "-"),
        stdout=asyncio.subprocess.PIPE,
    )
    flac, _ = await ffmpeg.communicate()
    if ffmpeg.returncode:
        raise RuntimeError(f"ffmpeg failed on {path}")
    return flac


def recognise(audio_uri: str, on_delta: Callable[[str], None]) -> tuple[str, str, float]:
    """Stream one recognition with the SDK; return text, request id and billed seconds."""
    text, request_id, seconds = "", "", 0.0
    responses = dashscope.MultiModalConversation.call(
        api_key="sk-baseline",
        model="qwen3-asr-flash",
        messages=[{"role": "user", "content": [{"audio": audio_uri}]}],
        result_format="message",
        asr_options={"language": "en"},
        stream=True,
        incremental_output=True,
    )
    for response in responses:
        if response.status_code != 200:
            raise RuntimeError(f"recognition failed: {response.code} {response.message}")
        request_id = response.request_id
        choice = response.output.choices[0]
        delta = "".join(part.get("text", "") for part in choice.message.content or [])
        if delta and choice.finish_reason != "stop":
            text += delta
            on_delta(delta)
        seconds = (response.usage or {}).get("seconds", seconds)
    return text, request_id, float(seconds)


async def main(args: argparse.Namespace) -> None:
    """Consume, transcribe, publish, commit; until killed."""
    dashscope.base_http_api_url = f"{args.asr_url}/api/v1"
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap)
    pool = concurrent.futures.ThreadPoolExecutor(args.threads)
    slots = asyncio.Semaphore(args.threads)
    loop = asyncio.get_running_loop()
    await consumer.start()
    await producer.start()

    async def handle(message: ConsumerRecord[bytes, bytes]) -> None:
        started_at = time.time()
        event = json.loads(message.value or b"{}")
        key = event["recording_id"].encode()
        flac = await to_flac(unquote(urlparse(event["audio_url"]).path))
        uri = "data:audio/flac;base64," + base64.b64encode(flac).decode()
        sequence = 0

        def on_delta(delta: str) -> None:
            nonlocal sequence
            partial = {"type": "partial", "recording_id": event["recording_id"]}
            partial |= {"sequence": sequence, "delta": delta}
            sequence += 1
            value = json.dumps(partial).encode()
            asyncio.run_coroutine_threadsafe(
                producer.send(args.partial_topic, value, key=key), loop
            )

        text, request_id, seconds = await loop.run_in_executor(pool, recognise, uri, on_delta)
        final = {"type": "final", "recording_id": event["recording_id"], "text": text}
        final |= {"request_ids": [request_id], "audio_seconds": seconds}
        final |= {"started_at": started_at}
        await producer.send_and_wait(args.final_topic, json.dumps(final).encode(), key=key)
        partition = TopicPartition(message.topic, message.partition)
        await consumer.commit({partition: message.offset + 1})

    async def bounded(message: ConsumerRecord[bytes, bytes]) -> None:
        try:
            await handle(message)
        finally:
            slots.release()

    tasks = set()
    try:
        async for message in consumer:
            if args.threads == 1:
                await handle(message)
                continue
            await slots.acquire()
            task = asyncio.create_task(bounded(message))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        await consumer.stop()
        await producer.stop()
        pool.shutdown(wait=False, cancel_futures=True)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("bootstrap", "topic", "partial-topic", "final-topic", "group", "asr-url"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_parse()))
