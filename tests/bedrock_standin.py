"""A local stand-in for the Bedrock Runtime REST API (Converse, ConverseStream, InvokeModel) on
127.0.0.1, speaking the real wire formats (JSON, AWS event-stream frames) so that botocore's own
serializers and parsers run. It answers from the documents in the request, so a test can see that
the retrieved documents reached the model."""
from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (lengths + CRC32), string headers, payload, message CRC32."""
    encoded = b"".join(struct.pack(">B", len(k)) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode()))
                       + v.encode() for k, v in headers.items())
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, payload: dict) -> bytes:
    return frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                 json.dumps(payload).encode())


def conversation(deltas: list[str], stop: str = "end_turn", usage: tuple[int, int] = (120, 9)) -> bytes:
    events = [event("messageStart", {"role": "assistant"})]
    events += [event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": d}}) for d in deltas]
    events += [event("contentBlockStop", {"contentBlockIndex": 0}),
               event("messageStop", {"stopReason": stop}),
               event("metadata", {"usage": {"inputTokens": usage[0], "outputTokens": usage[1],
                                            "totalTokens": sum(usage)}, "metrics": {"latencyMs": 321}})]
    return b"".join(events)


def titan_embedding(body: dict) -> dict:
    """A deterministic unit vector per text (a hash seeds it): same text, same vector."""
    seed = int.from_bytes(hashlib.sha256(body["inputText"].encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).normal(size=body.get("dimensions", 1024))
    if body.get("normalize", True):
        vector /= np.linalg.norm(vector)
    return {"embedding": vector.tolist(), "inputTextTokenCount": len(body["inputText"].split())}


class BedrockStandIn:
    """`mode`: "ok" answers; "throttle" answers 429 ThrottlingException to everything; "slow" answers
    after `delay_s` (a client read timeout shorter than that is a Bedrock timeout). A ConverseStream
    sends one frame every `drip_s` (0: all at once) and counts the streams it completed and those whose
    client hung up before the end (`streams_completed`, `streams_aborted`)."""

    def __init__(self):
        self.mode = "ok"
        self.delay_s = 0.0
        self.drip_s = 0.0
        self.words = 0  # > 0: the streamed answer is padded to this many words (a long generation)
        self.streams_completed = self.streams_aborted = 0
        self.requests: list[tuple[str, dict]] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                standin.requests.append((self.path, body))
                if standin.mode == "slow":
                    time.sleep(standin.delay_s)
                if standin.mode == "throttle":
                    return self._send(429, b'{"message": "Too many requests"}', "application/json",
                                      {"x-amzn-ErrorType": "ThrottlingException"})
                titles = re.findall(r'title="([^"]*)"', body["messages"][0]["content"][0]["text"]) if "messages" in body else []
                answer = f"From our documents: {', '.join(titles[:3]) or 'nothing relevant'}."
                if self.path.endswith("/invoke"):  # Titan Text Embeddings V2
                    return self._send(200, json.dumps(titan_embedding(body)).encode(), "application/json")
                if self.path.endswith("/converse-stream"):
                    words = re.findall(r"\S+\s*", answer)
                    words += [f"more{i} " for i in range(max(0, standin.words - len(words)))]
                    if not standin.drip_s:
                        return self._send(200, conversation(words), "application/vnd.amazon.eventstream")
                    return self._drip(conversation(words))
                if self.path.endswith("/converse"):
                    out = {"output": {"message": {"role": "assistant", "content": [{"text": answer}]}},
                           "stopReason": "end_turn", "usage": {"inputTokens": 120, "outputTokens": 9, "totalTokens": 129},
                           "metrics": {"latencyMs": 5}}
                    return self._send(200, json.dumps(out).encode(), "application/json")
                return self._send(404, b'{"message": "unknown operation"}', "application/json")

            def _drip(self, payload: bytes):
                """The stream frame by frame, `drip_s` apart, one HTTP chunk each as Bedrock sends them (a
                body without length would be read in 64 KB blocks: all at the end)."""
                self.protocol_version = "HTTP/1.1"
                self.send_response(200)
                self.send_header("content-type", "application/vnd.amazon.eventstream")
                self.send_header("transfer-encoding", "chunked")
                self.send_header("connection", "close")
                self.end_headers()
                frames, rest = [], payload
                while rest:
                    size = struct.unpack(">I", rest[:4])[0]
                    frames.append(rest[:size])
                    rest = rest[size:]
                try:
                    for f in frames:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(f), f))
                        self.wfile.flush()
                        time.sleep(standin.drip_s)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    standin.streams_aborted += 1
                    return
                standin.streams_completed += 1

            def _send(self, status, payload, content_type, headers=None):
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (its read timeout)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def settings(self, **overrides) -> dict:
        """`args.bedrock` for an app on this stand-in: a test Claude model with prices, no retries,
        a breaker that opens after two failures."""
        return {"endpoint_url": self.url, "region": "us-east-1", "claude_model_id": "test.claude-model",
                "max_attempts": 1, "breaker_failure_threshold": 2, "breaker_reset_s": 600,
                "prices": {"test.claude-model": {"input_per_1k": 0.003, "output_per_1k": 0.015}}, **overrides}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
