"""A real S3 API server on loopback for the tests: moto's app served from this process.

Its state lives in moto's in-process backends, so like a real S3 server (whose objects are on disk)
it keeps its buckets and objects across `stop()` and `start()` on the same port; `stop()` also cuts
the connections in flight, as a crashed server would.

The same port answers as AWS STS (AssumeRoleWithWebIdentity) and as EC2 instance metadata, both
moto's: the credential sources of the store's chain. `signed_by` records, per request, the access
key of its signature and its session token: which credentials the client really used.
"""

from __future__ import annotations

import io
import socket
import threading
from collections import deque
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

if TYPE_CHECKING:
    from minio import Minio
from werkzeug.serving import make_server


class S3Server:
    def __init__(self, port: int = 0):
        self.port = port
        self.fail_next = 0  # answer this many requests with 503 SlowDown (a server under load)
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = None
        self.signed_by: deque[tuple[str, str | None]] = deque(maxlen=1000)  # (access key id, X-Amz-Security-Token)
        self.sts_calls: list[dict[str, str]] = []  # the parameters of each STS call

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "S3Server":
        server = self

        class Handler(MotoRequestHandler):
            def setup(self):
                super().setup()
                with server._lock:
                    server._connections.add(self.connection)

            def finish(self):
                with server._lock:
                    server._connections.discard(self.connection)
                super().finish()

        moto_app = DomainDispatcherApplication(create_backend_app)

        def app(environ, start_response):
            with server._lock:
                fail, server.fail_next = server.fail_next > 0, max(0, server.fail_next - 1)
            if fail:
                start_response("503 Service Unavailable", [("Content-Type", "application/xml")])
                return [b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"]
            server._observe(environ)
            return moto_app(environ, start_response)

        self._server = make_server("127.0.0.1", self.port, app, threaded=True, request_handler=Handler)
        self.port = self._server.server_port
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _observe(self, environ) -> None:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if "Credential=" in auth:
            self.signed_by.append((auth.split("Credential=", 1)[1].split("/", 1)[0], environ.get("HTTP_X_AMZ_SECURITY_TOKEN")))
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        if environ["REQUEST_METHOD"] == "POST" and not auth and query.get("Action") == "AssumeRoleWithWebIdentity":
            # moto routes an unsigned STS call by the Action in its form body, as botocore sends it;
            # minio's WebIdentityProvider sends the same parameters as the query string of an empty
            # POST (which AWS STS accepts too): hand them to moto as the form body.
            body = environ["QUERY_STRING"].encode()
            environ.update(
                {"QUERY_STRING": "", "CONTENT_TYPE": "application/x-www-form-urlencoded", "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
            )
            self.sts_calls.append(query)

    def client(self) -> "Minio":
        """A plain client without retries: what another reader of the bucket sees, request by request."""
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(retries=urllib3.Retry(total=0, raise_on_status=False), timeout=urllib3.Timeout(connect=2, read=10))
        return Minio(self.endpoint.removeprefix("http://"), "sicog-test", "sicog-test-secret", secure=False, region="us-east-1", http_client=http)

    def stop(self) -> None:
        """Stop listening and reset every open connection (requests in flight fail)."""
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
