#!/usr/bin/env python3
"""Stand-in "internet" web server for the local lab.

Runs inside network namespace crlab-inet (started by lab/up.sh) and answers
every GET with the client's address, so a test can prove that VM traffic
reached it through the network node's NAT:

    $ curl http://10.255.0.254:8080/
    you are 10.255.0.1

Standard library only. Address and port can be overridden with
LAB_INET_ADDR / LAB_INET_PORT.
"""

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    server_version = "crlab-inet/1"

    def do_GET(self):  # noqa: N802 (http.server naming)
        body = f"you are {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()

    def log_message(self, fmt, *args):
        sys.stderr.write(f"{self.client_address[0]} {fmt % args}\n")


def main():
    addr = os.environ.get("LAB_INET_ADDR", "10.255.0.254")
    port = int(os.environ.get("LAB_INET_PORT", "8080"))
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    httpd = ThreadingHTTPServer((addr, port), Handler)
    print(f"listening on {addr}:{port}", file=sys.stderr, flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
