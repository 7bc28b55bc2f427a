#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into fuzz/corpus/<target>/seed-*.

Run once before the first fuzzing session (the fuzzers then grow and `cargo fuzz cmin` shrinks
the corpus). Seeds are the shapes real clients send plus the classic hostile ones, so that the
fuzzer starts from the interesting parts of each format.
"""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def frame(opcode, payload, fin=True, mask=b"\x11\x22\x33\x44", rsv=0, force_len=None):
    """A client WebSocket frame (masked unless mask is None)."""
    if isinstance(payload, str):
        payload = payload.encode()
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload) if force_len is None else force_len
    m = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes([first, m | n])
    elif n < 65536:
        head = bytes([first, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, m | 127]) + struct.pack(">Q", n)
    if mask is None:
        return head + payload
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


# --- v2_text_decode: a text message; byte 0 also steers the reader, the rest is its stream ---
T = "v2_text_decode"
write(T, "join", '["1","1","room:1","phx_join",{"token":"a.b.c"}]')
write(T, "heartbeat", '[null,"2","phoenix","heartbeat",{}]')
write(T, "push-nested", '["1","3","weather:wind","speed",{"a":[1,2.5e3,null,true],"b":"\\u00e9"}]')
write(T, "null-join-ref", '[null,"4","t","ev","x"]')
write(T, "numeric-ref", '[1,2,"t","ev",{}]')
write(T, "escaped", '["\\u0031","\\"","t\\u003a1","e\\n",{"token":"\\ud83d\\ude00"}]')
write(T, "extra-elements", '["1","1","t","e",{},1,2,3]')
write(T, "four-elements", '["1","1","t","e"]')
write(T, "empty-topic", '["1","1","","e",{}]')
write(T, "v1-object", '{"topic":"room:1","event":"phx_join","payload":{"token":"x"},"ref":"1","join_ref":"1"}')
write(T, "v1-duplicate", '{"topic":"a","topic":"b","event":"e","payload":{}}')
write(T, "whitespace", ' [ "1" , "1" , "t" , "e" ,\t{ }\r\n] ')
write(T, "deep", "[" * 200 + "]" * 200)
write(T, "big-number", '["1","1","t","e",1e400]')
# Reader streams: control byte, then frames.
write(T, "ws-text", b"\x00" + frame(1, '["1","1","t","e",{}]'))
write(T, "ws-fragmented", b"\x05" + frame(1, '["1","1",', fin=False) + frame(9, "ping")
      + frame(0, '"t","e",{}]'))
write(T, "ws-close", b"\x09" + frame(8, struct.pack(">H", 1000) + b"bye"))
write(T, "ws-close-bad-code", b"\x09" + frame(8, struct.pack(">H", 1005)))
write(T, "ws-binary", b"\x02" + frame(2, b"\x00\x01\x01\x01\x01jrtedata"))
write(T, "ws-unmasked", b"\x01" + frame(1, "x", mask=None))
write(T, "ws-bad-utf8", b"\x01" + frame(1, b"\xff\xfe"))
write(T, "ws-too-big", b"\x00" + frame(1, b"", force_len=70000))
write(T, "ws-64bit-len", b"\x00" + frame(2, b"", force_len=1 << 63))
write(T, "ws-rsv", b"\x01" + frame(1, "x", rsv=0x40))
write(T, "ws-pong-and-reserved-opcode", b"\x11" + frame(10, "p") + frame(3, "r"))

# --- binary_decode: one binary message ---
B = "binary_decode"
write(B, "push", b"\x00\x01\x01\x06\x04" + b"12room:1ping" + b"\x00\x01\xff")
write(B, "null-refs", b"\x00\x00\x00\x01\x01te{}")
write(B, "truncated", b"\x00\x05\x05\x05\x05ab")
write(B, "kind-2", b"\x02\x01\x01te")
write(B, "bad-utf8-topic", b"\x00\x00\x00\x01\x01\xffe")
write(B, "empty-event", b"\x00\x00\x00\x01\x00t")
write(B, "max-lengths", b"\x00\xff\xff\xff\xff" + b"j" * 255 + b"r" * 255 + b"t" * 255 + b"e" * 255)

# --- http_head: the bytes a client sends before the upgrade ---
H = "http_head"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
write(H, "phoenix-js", "GET /socket/websocket?userToken=a.b.c&vsn=2.0.0 HTTP/1.1\r\nHost: localhost:2347\r\n"
      "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
      f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Protocol: phoenix, base64url.bearer.phx.YS5iLmM\r\n\r\n")
write(H, "v1", f"GET /websocket?vsn=1.0.0 HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
      f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n")
write(H, "bad-vsn", f"GET /websocket?vsn=%zz&userToken=%C3%28 HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n")
write(H, "version-8", "GET /websocket HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 8\r\n\r\n")
write(H, "token", 'POST /token HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\r\n{"channel":"room"}')
write(H, "preflight", "OPTIONS /token HTTP/1.1\r\nOrigin: http://x\r\n\r\n")
write(H, "healthz", "GET /healthz HTTP/1.1\r\n\r\n")
write(H, "405", "DELETE /metrics HTTP/1.0\r\n\r\n")
write(H, "chunked", "POST /token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
write(H, "two-lengths", "POST /token HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
write(H, "tls-hello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")
write(H, "partial", "GET /websocket HTTP/1.1\r\nHost: x\r\n")
write(H, "many-headers", "GET / HTTP/1.1\r\n" + "".join(f"X-{i}: 1\r\n" for i in range(70)) + "\r\n")
write(H, "bad-header-utf8", b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n")

# --- config_load: a TOML file ---
C = "config_load"
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "..", "..", "config", "channel.toml"), "rb") as f:
    write(C, "channel-toml", f.read())
with open(os.path.join(here, "..", "..", "tests", "fixtures", "tangram.toml"), "rb") as f:
    write(C, "tangram-toml", f.read())
write(C, "secrets", '[channel]\njwt_secret = "s3cr3t-s3cr3t"\nadmin_key = "0123456789abcdef0123"\n'
      'redis_url = "redis://user:pw@127.0.0.1:6379/0"\n')
write(C, "bad-types", '[channel]\nport = "80"\nshards = -1\nmax_frame_bytes = 1e9\n')
write(C, "unknown-key", '[channel]\nhandshake_timeout = 1\n')
write(C, "core-not-table", 'core = 1\n[channel]\n')
write(C, "ipv6", '[channel]\nhost = "::"\npublic_url = "https://x.example/\\"\\n"\n')
write(C, "big-int", '[channel]\nport = 99999999999999999999\n')
