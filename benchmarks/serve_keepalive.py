"""Request latency of `fewsight serve` on one keep-alive connection, against a fresh connection per
request: starts `fewsight serve MODEL --port 0` in a process of its own, sends GET / on one
HTTP/1.1 connection (after 50 warm-up requests), then on new connections, and prints the median and
99th percentile of each in milliseconds. Usage:

    python benchmarks/serve_keepalive.py [--requests 2000] [--fresh 200] [--model omniglot]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import time
from urllib.parse import urlsplit


def get(connection: http.client.HTTPConnection) -> float:
    """Milliseconds for one GET / with its whole answer read."""
    start = time.perf_counter()
    connection.request("GET", "/")
    response = connection.getresponse()
    response.read()
    elapsed = (time.perf_counter() - start) * 1000
    if response.status != 200:
        raise SystemExit(f"GET / answered {response.status}")
    return elapsed


def percentiles(times: list[float]) -> str:
    cuts = statistics.quantiles(times, n=100)
    return f"p50 {statistics.median(times):.2f} ms, p99 {cuts[98]:.2f} ms ({len(times)} requests)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="keep-alive GETs (default: %(default)s)")
    parser.add_argument("--fresh", type=int, default=200, help="fresh-connection GETs (default: %(default)s)")
    parser.add_argument("--model", default="omniglot", help="model to serve (default: %(default)s)")
    args = parser.parse_args()
    command = [sys.executable, "-m", "fewsight", "serve", args.model, "--port", "0", "--device", "cpu"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        address = urlsplit(server.stdout.readline().split()[2])
        connection = http.client.HTTPConnection(address.hostname, address.port)
        for _ in range(50):
            get(connection)
        kept = [get(connection) for _ in range(args.requests)]
        connection.close()
        fresh = []
        for _ in range(args.fresh):
            connection = http.client.HTTPConnection(address.hostname, address.port)
            fresh.append(get(connection))
            connection.close()
    finally:
        server.terminate()
        server.wait(10)
    print(f"keep-alive: {percentiles(kept)}")
    print(f"fresh connections: {percentiles(fresh)}")


if __name__ == "__main__":
    main()
