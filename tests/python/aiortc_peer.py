"""The independent WebRTC peer of the call interop test: aiortc answers a call from Hestia's
str0m peer (tests/src/bin/call-peer.rs), which this script runs as its child and talks to by
JSON lines. Both send a tone; each records what it hears to a WAV file the Rust test decodes.

Run it in a network namespace with only loopback (unshare -n): aiortc gathers host addresses
from the interfaces and would otherwise ask a public STUN server. Here host gathering is patched
to 127.0.0.1 and no ICE server is configured, so nothing leaves the machine.

    aiortc_peer.py HESTIA_PEER_BIN TONE_HZ RECORD.wav HESTIA_TONE_HZ HESTIA_RECORD.wav SECONDS
"""

import asyncio
import fractions
import json
import math
import struct
import sys
import time
import wave

import aioice.ice

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

import av  # noqa: E402
from aiortc import (  # noqa: E402
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp  # noqa: E402

RATE = 48000
FRAME = 960


class Tone(MediaStreamTrack):
    kind = "audio"

    def __init__(self, hz):
        super().__init__()
        self.hz = hz
        self.sent = 0
        self.start = None

    async def recv(self):
        if self.start is None:
            self.start = time.time()
        wait = self.start + self.sent / RATE - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        step = 2 * math.pi * self.hz / RATE
        data = struct.pack(
            "<%dh" % FRAME,
            *(int(8000 * math.sin(step * (self.sent + i))) for i in range(FRAME)),
        )
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(data)
        frame.sample_rate = RATE
        frame.pts = self.sent
        frame.time_base = fractions.Fraction(1, RATE)
        self.sent += FRAME
        return frame


async def record(track, path):
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            for f in resampler.resample(frame):
                w.writeframes(bytes(f.planes[0])[: f.samples * 2])


async def main():
    peer_bin, hz, out, hestia_hz, hestia_out, secs = sys.argv[1:7]
    child = await asyncio.create_subprocess_exec(
        peer_bin,
        hestia_hz,
        hestia_out,
        secs,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )

    def tell(msg):
        child.stdin.write((json.dumps(msg) + "\n").encode())

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(Tone(float(hz)))
    recorders = []

    @pc.on("track")
    def on_track(track):
        if track.kind == "audio":
            recorders.append(asyncio.ensure_future(record(track, out)))

    result = {}
    async for raw in child.stdout:
        msg = json.loads(raw)
        kind = msg["type"]
        if kind == "offer":
            await pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            # The answer carries aiortc's gathered candidates in its SDP.
            tell({"type": "answer", "sdp": pc.localDescription.sdp})
            await child.stdin.drain()
        elif kind == "candidates":
            for line in msg["candidates"]:
                c = candidate_from_sdp(line.removeprefix("candidate:"))
                c.sdpMLineIndex = 0
                await pc.addIceCandidate(c)
            await pc.addIceCandidate(None)
        elif kind == "connected":
            result["connected"] = True
        elif kind == "ended":
            result.update(msg)
            break
    await child.wait()
    await pc.close()
    for r in recorders:
        r.cancel()
    await asyncio.gather(*recorders, return_exceptions=True)
    print(json.dumps(result))
    return 0 if result.get("talked_ms", 0) > 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
