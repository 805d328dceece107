"""A minimal OTLP/gRPC trace receiver for the tests: opentelemetry-proto's TraceService on
grpcio (both from PyPI, not ours). Prints its port on the first line of stdout, then writes every
span it receives as one JSON line to the file named by its argument.

usage: collector.py SPANS_FILE [CERT_PEM KEY_PEM]   (with a certificate: TLS)
"""

import json
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


def value(v):
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
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
                    }
                    self.out.write(json.dumps(line) + "\n")
        self.out.flush()
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    out = open(sys.argv[1], "a", encoding="utf-8")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(out), server)
    if len(sys.argv) > 3:
        with open(sys.argv[2], "rb") as c, open(sys.argv[3], "rb") as k:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
