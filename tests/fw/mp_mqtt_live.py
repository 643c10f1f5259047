# The firmware MQTT client against a live peer (a scripted broker or mosquitto), driven from pytest.
#
# argv: host port [key=value ...]  (id, user, password, keepalive, retry, bmin, bmax)
# Prints one marker per event for the pytest side to read:
#   LINK up | LINK down <reason> | DOWNPUB <result of publish() while down>
#   PUB <pid> <payload> | PUBACK <pid> | MSG <topic> <payload> | STOPPED
#   BURST done <n> heap <bytes still allocated after a collect, against before the burst>
# Commands arrive as messages on the device's downlink topic:
#   "pub <text>" publishes <text> on the uplink; "burst <n>" publishes m0..m<n-1> as fast as slots free;
#   "stop" ends the client cleanly (DISCONNECT); "dropped" prints DROPPED <downlinks discarded so far>.
import mpyboot  # noqa: F401 (sys.path)
import gc
import sys
import asyncio
from cs.mqtt.client import Client

host = sys.argv[1]
port = int(sys.argv[2])
opt = {"id": "hf01-w01", "user": "hf01-w01", "password": "pw", "keepalive": "30", "retry": "5000",
       "bmin": "200", "bmax": "2000"}
for a in sys.argv[3:]:
    k, v = a.split("=", 1)
    opt[k] = v
dev = opt["id"]
UP = "cs/1/d/%s/up" % dev
DOWN = "cs/1/d/%s/down" % dev
freed = asyncio.Event()
acked = [0]
jobs = []


def say(*a):
    print(*a)


def on_link(up):
    if up:
        say("LINK up")
    else:
        say("LINK down", c.last_error)
        say("DOWNPUB", c.publish(UP, b"while-down"))
    freed.set()


def on_puback(pid):
    acked[0] += 1
    say("PUBACK", pid)
    freed.set()


def on_msg(topic, payload):
    text = bytes(payload).decode()
    say("MSG", bytes(topic).decode(), text)
    if text.startswith("pub "):
        body = text[4:].encode()
        say("PUB", c.publish(UP, body), text[4:])
    elif text.startswith("burst "):
        jobs.append(asyncio.create_task(burst(int(text[6:]))))
    elif text == "stop":
        c.stop()
    elif text == "dropped":
        say("DROPPED", c.dropped())


async def burst(n):
    # The application's side of a full window: publish() returns None, wait for a PUBACK, offer again.
    base = acked[0]
    gc.collect()
    heap0 = gc.mem_alloc()
    for i in range(n):
        body = b"m%d" % i
        while True:
            pid = c.publish(UP, body)
            if pid is not None:
                break
            freed.clear()
            await freed.wait()
    while acked[0] - base < n:
        freed.clear()
        await freed.wait()
    gc.collect()
    say("BURST done", n, "heap", gc.mem_alloc() - heap0)


c = Client(host, port, dev, opt["user"], opt["password"], "cs/1/d/%s/will" % dev,
           keepalive=int(opt["keepalive"]), on_msg=on_msg, on_link=on_link, on_puback=on_puback,
           retry_ms=int(opt["retry"]), backoff_min_ms=int(opt["bmin"]), backoff_max_ms=int(opt["bmax"]))
c.subscribe(DOWN, 1)
asyncio.run(c.run())
say("STOPPED")
