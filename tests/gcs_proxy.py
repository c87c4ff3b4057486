"""A TLS front for the GCS emulator, as Google's front ends are to GCS.

    python tests/gcs_proxy.py CERT KEY PORT UPSTREAM_PORT

TF's GCS file system starts resumable uploads with `Transfer-Encoding:
identity` on an empty POST, which Google's servers accept and Go's HTTP
server (fake-gcs-server) refuses with 501. This proxy terminates TLS for
`www.googleapis.com` and `storage.googleapis.com` and forwards each request
to the emulator with a plain `Content-Length` body, the Host header kept
(the emulator tells the XML API from the JSON API by it), and points the
upload session URLs it returns back at itself (https). Test
infrastructure only: run inside the tests' private network namespace.
"""

from __future__ import annotations

import http.client
import http.server
import ssl
import sys

# Hop-by-hop headers, set anew on each side.
_HOP = {"connection", "content-length", "transfer-encoding", "keep-alive", "expect"}


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, each reply
    # waits for the client's delayed ACK (about 40 ms a request).
    disable_nagle_algorithm = True
    upstream_port = 0

    def log_message(self, *args):  # Quiet: the emulator logs each request.
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self):
        body = self._body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port)
        upstream.request(self.command, self.path, body=body, headers=headers)
        reply = upstream.getresponse()
        data = reply.read()
        upstream.close()
        self.send_response(reply.status, reply.reason)
        for key, value in reply.getheaders():
            if key.lower() == "location":  # The upload session, through here.
                value = value.replace("http://", "https://", 1)
            if key.lower() not in _HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward


def main(cert: str, key: str, port: str, upstream_port: str) -> None:
    _Forward.upstream_port = int(upstream_port)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), _Forward)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:])
