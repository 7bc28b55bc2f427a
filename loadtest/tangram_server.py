#!/usr/bin/env python3
"""Run Tangram's Channel service (tangram-core 0.6.0, the baseline of issue 3) on its own.

    pip install tangram-core==0.6.0
    python3 loadtest/tangram_server.py --port 2347 --redis-url redis://127.0.0.1:6380

It serves the same public surface as `channel serve`: POST /token and GET /websocket (Phoenix V2 JSON).
The process pid is the one to give `loadtest run --server-pid` (the service runs in this process).
"""
import argparse
import asyncio
import os
import sys

from tangram_core import _core


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2347)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    p.add_argument("--jwt-secret", default="secret")
    p.add_argument("--jwt-expiration-secs", type=int, default=315360000)
    p.add_argument("--id-length", type=int, default=8)
    p.add_argument("--log", default="warn", help="tracing filter, e.g. info or warn")
    a = p.parse_args()

    _core.init_tracing_stderr(a.log)
    config = _core.ChannelConfig(
        host=a.host,
        port=a.port,
        redis_url=a.redis_url,
        jwt_secret=a.jwt_secret,
        jwt_expiration_secs=a.jwt_expiration_secs,
        id_length=a.id_length,
    )
    print(f"tangram channel service pid={os.getpid()} on http://{a.host}:{a.port} redis={a.redis_url}",
          file=sys.stderr, flush=True)
    try:
        asyncio.run(_run(config))
    except KeyboardInterrupt:
        pass
    return 0


async def _run(config) -> None:
    await _core.run(config)


if __name__ == "__main__":
    sys.exit(main())
