"""The smallest app Forge can run: the standard library only, listening on $PORT."""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GREETING = os.environ.get("GREETING", "hello from Forge")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            body = b"ok\n"
        else:
            body = (json.dumps({"greeting": GREETING, "release": os.environ.get("FORGE_DEPLOYMENT")}) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if self.path != "/health" else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# 127.0.0.1 is fine: Forge reaches the app inside its own network namespace either way.
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
