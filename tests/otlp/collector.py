"""A minimal OTLP trace receiver for the tests: opentelemetry-proto's TraceService on grpcio
(OTLP/gRPC), or with --http Python's http.server taking `POST /v1/traces` with protobuf bodies
(OTLP/HTTP); the messages are opentelemetry-proto's (PyPI), not ours. Prints its port on the
first line of stdout, then writes every span it receives as one JSON line to SPANS_FILE (with
the protocol that brought it and, over HTTP, the client's port: one port, one connection).

usage: collector.py [--http [--close]] [--fail N:CODE[:RETRY_AFTER]] SPANS_FILE [CERT_PEM KEY_PEM]
       (with a certificate: TLS)

--close: answer every request with `Connection: close` and close (an exporter must reconnect).
--fail: refuse the first N export requests with CODE (an HTTP status, or a gRPC code's name such
as UNAVAILABLE), with `Retry-After: RETRY_AFTER` over HTTP when given; each refusal is written
as {"refused": CODE}.
A POST to another path than /v1/traces is answered 404 and written as {"rejected_path": PATH}.
"""

import http.server
import json
import ssl
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


def value(v):
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


class Spans:
    """The spans file, written by any thread."""

    def __init__(self, path):
        self.out = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()

    def reject(self, path):
        self.note({"rejected_path": path})

    def note(self, line):
        with self.lock:
            self.out.write(json.dumps(line) + "\n")
            self.out.flush()

    def write(self, request, protocol, peer_port=None):
        with self.lock:
            self._write(request, protocol, peer_port)

    def _write(self, request, protocol, peer_port):
        for rs in request.resource_spans:
            resource = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    line = {
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "flags": s.flags,
                        "name": s.name,
                        "kind": trace_pb2.Span.SpanKind.Name(s.kind),
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "status": trace_pb2.Status.StatusCode.Name(s.status.code),
                        "status_message": s.status.message,
                        "attributes": {a.key: value(a.value) for a in s.attributes},
                        "resource": resource,
                        "scope": ss.scope.name,
                        "protocol": protocol,
                        "peer_port": peer_port,
                    }
                    self.out.write(json.dumps(line) + "\n")
        self.out.flush()


class Refusals:
    """The first N requests are refused with CODE (--fail)."""

    def __init__(self, spec):
        parts = spec.split(":") if spec else ["0", ""]
        self.left = int(parts[0])
        self.code = parts[1]
        self.retry_after = parts[2] if len(parts) > 2 else None
        self.lock = threading.Lock()

    def take(self):
        """True when this request is to be refused."""
        with self.lock:
            if self.left > 0:
                self.left -= 1
                return True
            return False


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, spans, refusals):
        self.spans = spans
        self.refusals = refusals

    def Export(self, request, context):
        if self.refusals.take():
            self.spans.note({"refused": self.refusals.code})
            context.abort(getattr(grpc.StatusCode, self.refusals.code), "refused by --fail")
        self.spans.write(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


def http_handler(spans, close, refusals):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, status, body, content_type, headers=()):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self.path != "/v1/traces":
                spans.reject(self.path)
                return self.reply(404, b"not found\n", "text/plain")
            if refusals.take():
                spans.note({"refused": refusals.code})
                headers = [("Retry-After", refusals.retry_after)] if refusals.retry_after else []
                return self.reply(int(refusals.code), b"refused by --fail\n", "text/plain", headers)
            if self.headers.get("Content-Type") != "application/x-protobuf":
                return self.reply(415, b"want application/x-protobuf\n", "text/plain")
            request = trace_service_pb2.ExportTraceServiceRequest()
            try:
                request.ParseFromString(body)
            except Exception as e:  # a body that is not the message
                return self.reply(400, str(e).encode(), "text/plain")
            spans.write(request, "http/protobuf", self.client_address[1])
            response = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.reply(200, response, "application/x-protobuf")

        def log_message(self, *args):
            pass

    return Handler


def main():
    args = sys.argv[1:]
    use_http = args[:1] == ["--http"]
    if use_http:
        args = args[1:]
    close = args[:1] == ["--close"]
    if close:
        args = args[1:]
    fail = None
    if args[:1] == ["--fail"]:
        fail, args = args[1], args[2:]
    refusals = Refusals(fail)
    spans = Spans(args[0])
    tls = args[1:3] if len(args) > 2 else None
    if use_http:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http_handler(spans, close, refusals))
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls[0], tls[1])
            server.socket = context.wrap_socket(server.socket, server_side=True)
        print(server.server_address[1], flush=True)
        server.serve_forever()
        return
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(spans, refusals), server)
    if tls:
        with open(tls[0], "rb") as c, open(tls[1], "rb") as k:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
