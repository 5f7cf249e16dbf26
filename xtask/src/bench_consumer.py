"""The official Python SDK as a benchmark consumer for `cargo xtask bench`.

usage: python bench_consumer.py <connection string> <queue,queue,...> <count> <concurrency> [latency]

One thread, connection and peek-lock receiver per queue. Each receives up to <concurrency>
messages at a time (no prefetch) and completes them one by one, until <count> messages in
all are completed. Prints `ready` once every receiver link is open, `latency-us <n>` per
message with `latency` (now minus the `sent-at-us` property), and at the end
`msgs/s <rate> cpu-s <CPU seconds this process used meanwhile>`.
"""

import sys
import threading
import time

from azure.servicebus import ServiceBusClient

cs, queues, count, concurrency = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
latency = sys.argv[5:] == ["latency"]
lock = threading.Lock()
done = 0
finished = None  # (wall, CPU) when the last message was completed: closing is not timed
failure = []
opened = threading.Barrier(len(queues) + 1)


def sent_at(m):
    props = m.application_properties or {}
    value = props.get(b"sent-at-us", props.get("sent-at-us"))
    if value is None:
        raise ValueError("the message has no sent-at-us property")
    return int(value)


def drain(queue):
    global done, finished
    try:
        with ServiceBusClient.from_connection_string(cs) as client:
            with client.get_queue_receiver(queue, max_wait_time=0.2) as receiver:
                receiver.peek_messages(max_message_count=1)  # opens the link
                opened.wait()
                while True:
                    with lock:
                        if done >= count:
                            return
                    for m in receiver.receive_messages(max_message_count=concurrency, max_wait_time=0.2):
                        if latency:
                            sys.stdout.write(f"latency-us {time.time_ns() // 1000 - sent_at(m)}\n")
                        receiver.complete_message(m)
                        with lock:
                            done += 1
                            if done == count:
                                finished = (time.time(), time.process_time())
    except BaseException as e:  # reported by the main thread
        failure.append(f"{queue}: {e!r}")
        opened.abort()


threads = [threading.Thread(target=drain, args=(q,), daemon=True) for q in queues]
for t in threads:
    t.start()
try:
    opened.wait()
except threading.BrokenBarrierError:
    sys.exit("; ".join(failure))
print("ready", flush=True)
start, cpu = time.time(), time.process_time()
for t in threads:
    t.join()
if failure:
    sys.exit("; ".join(failure))
print(f"msgs/s {count / (finished[0] - start)} cpu-s {finished[1] - cpu}", flush=True)
