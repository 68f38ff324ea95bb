"""Run the stand-in WeChat API (wxhook.tools.sandbox) for the benchmark, in its own process.

    python bench/upstream.py --port 18900 --appid wx... --secret ... --latency 0.030

Control API used by bench/run.py: GET /_sandbox/stats, POST /_sandbox/reset,
POST /_sandbox/config {"latency": 0.03}.
"""

import argparse
import os
import sys

import uvicorn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wxhook.tools.sandbox import create_sandbox


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--appid", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--latency", type=float, default=0.030)
    a = p.parse_args()
    app = create_sandbox(appid=a.appid, secret=a.secret, latency=a.latency)
    uvicorn.run(app, host=a.host, port=a.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", backlog=4096)


if __name__ == "__main__":
    main()
