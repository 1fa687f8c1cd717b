"""An HTTPS proxy that puts TensorFlow's gs:// client in front of fake-gcs-server.

TensorFlow's GCS client (C++, libcurl) calls the hard-coded endpoints
https://www.googleapis.com and https://storage.googleapis.com and has no
emulator setting, but its libcurl honours `https_proxy` and `CURL_CA_BUNDLE`.
This proxy answers every CONNECT, ends the tunnel's TLS itself with a
certificate for those hosts (signed by a throwaway CA the test makes), and
forwards each request over plain HTTP to the emulator, Host header kept (the
emulator serves downloads by Host: storage.googleapis.com). Two fixes on the way:

- requests: TensorFlow sends `Transfer-Encoding: identity` with empty POSTs,
  which Go's HTTP server (the emulator) rejects with "501 Unsupported transfer
  encoding"; hop-by-hop headers are dropped and Content-Length set instead;
- responses: the emulator's resumable-upload `Location` says `http://`
  (it serves HTTP behind us); it is rewritten to `https://` so the upload's
  PUT comes back through this proxy.

Usage: gcs_emulator_proxy.py UPSTREAM_PORT CERT KEY LOG. Listens on a free
port of 127.0.0.1 and prints "READY <port>"; appends one line per tunnel and
per request to LOG.
"""

import http.client
import http.server
import socket
import ssl
import sys
import threading

HOP_BY_HOP = {
    "transfer-encoding",
    "connection",
    "expect",
    "keep-alive",
    "proxy-connection",
    "content-length",
}


def main(upstream_port, cert, key, log_path):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    log_lock = threading.Lock()

    def log(line):
        with log_lock, open(log_path, "a") as f:
            f.write(line + "\n")

    class Forward(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def _body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b""):
                            pass
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self):
            body = self._body()
            log(f"REQUEST {self.command} {self.headers.get('Host')} {self.path} {len(body)}")
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
            finally:
                upstream.close()
            self.send_response_only(response.status, response.reason)
            for k, v in response.getheaders():
                if k.lower() == "location" and v.startswith("http://"):
                    v = "https://" + v[len("http://") :]
                if k.lower() not in HOP_BY_HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            self.wfile.flush()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _forward

    def tunnel(client):
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            log(f"TUNNEL {line}")
            if not line.startswith("CONNECT "):
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            Forward(context.wrap_socket(client, server_side=True), ("127.0.0.1", 0), None)
        except (OSError, ssl.SSLError) as error:
            log(f"ERROR {error!r}")
        finally:
            client.close()

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print("READY", listener.getsockname()[1], flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=tunnel, args=(client,), daemon=True).start()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
