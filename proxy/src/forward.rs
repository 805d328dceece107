//! Executes an HTTP plan: the backend's pending cap, then attempts — each to an endpoint the
//! balancer picks, bounded by the per-try timeout — retried as the route says while its budget
//! allows, all within the request timeout. Each attempt's outcome feeds the balancer's latency
//! estimate and outlier detection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{FutureExt as _, StreamExt as _};
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use tracing::{debug, info};
use weft_certs::SpiffeId;
use weft_proto::model::{Retry, RetryPolicy};

use crate::balance::{Ejection, Lease, Outcome, ServiceState};
use crate::body::Body;
use crate::error::{ERROR_HEADER, ProxyError};
use crate::listen::Ctx;
use crate::metrics::{EjectionLabels, RetryLabels};
use crate::observe::{Exchange, grpc_error, grpc_status, http_attributes};
use crate::peers::ResponseBody;
use crate::plan::Plan;
use crate::retry::{self, Failure, RequestBody};
use crate::trace::context::TRACEPARENT;
use crate::trace::{Kind, OpenSpan, SpanRecord, Value, error_type};

/// What the attempts produced: the response (or the error the proxy answers with), the
/// identity of the endpoint that answered, and whether the budget withheld a retry.
#[derive(Debug)]
pub struct Forwarded {
    pub result: Result<Response<Body>, ProxyError>,
    pub server_id: Option<SpiffeId>,
    /// A retry was due and the budget refused it.
    pub budget_exhausted: bool,
}

/// Sends `head` + `body` as the plan says. `head` is ready for the peer (HTTP/2, absolute URI,
/// hop-by-hop headers gone); its body is ignored. An observed request (`observed`) has its
/// attempts and last endpoint noted there and, when traced, a CLIENT span per attempt.
pub async fn forward(
    ctx: &Ctx,
    plan: &Plan,
    head: Request<()>,
    body: Body,
    observed: Option<&mut Exchange>,
) -> Forwarded {
    let mut server_id = None;
    let mut budget_exhausted = false;
    // The attempts' future is made in each arm, not bound before the match: a bound future
    // moved into `timeout` would keep its own slot in this future too, doubling the size of
    // what every request moves (docs/benchmarks.md). The same goes for `attempt` below.
    let (server, exhausted) = (&mut server_id, &mut budget_exhausted);
    let result = match plan.timeouts.request {
        Some(limit) => {
            match tokio::time::timeout(
                limit,
                attempts(ctx, plan, head, body, server, exhausted, observed),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(ProxyError::Timeout(format!(
                    "no response from {} within the request timeout {}",
                    plan.backend,
                    humantime::format_duration(limit)
                ))),
            }
        }
        None => attempts(ctx, plan, head, body, server, exhausted, observed).await,
    };
    let result = match result {
        Ok(mut resp) if budget_exhausted => {
            // The application's own response goes back; the header says why it was not retried.
            resp.headers_mut().insert(
                ERROR_HEADER,
                HeaderValue::from_static("retry-budget-exhausted"),
            );
            Ok(resp)
        }
        Err(e) if budget_exhausted => Err(ProxyError::RetryBudgetExhausted {
            original: Box::new(e),
        }),
        other => other,
    };
    Forwarded {
        result,
        server_id,
        budget_exhausted,
    }
}

async fn attempts(
    ctx: &Ctx,
    plan: &Plan,
    head: Request<()>,
    body: Body,
    server_id: &mut Option<SpiffeId>,
    budget_exhausted: &mut bool,
    mut observed: Option<&mut Exchange>,
) -> Result<Response<Body>, ProxyError> {
    let state = ctx.balancers.service(&plan.backend);
    let _pending = state.admit(plan.traffic.max_pending_requests)?;
    let retry: Option<(&Retry, &RetryPolicy)> = plan.route.as_ref().and_then(|r| r.retry());
    let Some((retry, policy)) = retry.filter(|(r, _)| r.attempts > 0) else {
        // No retries: one attempt, the body streamed straight through.
        let lease = pick(&state, plan, &[])?;
        *server_id = Some(lease.endpoint.identity.clone());
        if let Some(x) = observed.as_deref_mut() {
            x.attempts = 1;
            x.endpoint = lease.endpoint.address.to_string();
        }
        let (result, _) = attempt(
            ctx,
            plan,
            lease,
            head,
            body,
            false,
            (observed.as_deref(), 0),
        )
        .await;
        return result;
    };
    let peek_grpc = !policy.grpc_on.is_empty();
    let budget = plan
        .route
        .as_ref()
        .map(|r| ctx.budgets.route(&r.route().id));
    if let Some(b) = &budget {
        b.deposit(Instant::now());
    }
    let mut body = RequestBody::new(body);
    let mut tried = Vec::new();
    let mut n = 0;
    // The failed try a retry replaces, kept until the retry has an endpoint to go to.
    let mut previous: Option<Result<Response<Body>, ProxyError>> = None;
    loop {
        let lease = match pick(&state, plan, &tried) {
            Ok(l) => l,
            // Nowhere to retry (say, the failure ejected the last endpoint): the failure the
            // application or its endpoint gave is the answer, not the balancer's.
            Err(e) => return previous.unwrap_or(Err(e)),
        };
        if previous.take().is_some() {
            // The failed response is dropped here; its connection stays pooled.
            ctx.metrics.retries.get_or_create(&retry_labels(plan)).inc();
        }
        tried.push(lease.endpoint.address);
        *server_id = Some(lease.endpoint.identity.clone());
        // The first attempt always has the body; later ones only when `replayable` said so.
        let Some(b) = body.take() else {
            return Err(ProxyError::BadRequest(
                "the request body cannot be sent again".into(),
            ));
        };
        if let Some(x) = observed.as_deref_mut() {
            x.attempts += 1;
            x.endpoint = lease.endpoint.address.to_string();
        }
        let (result, failure) = attempt(
            ctx,
            plan,
            lease,
            clone_head(&head),
            b,
            peek_grpc,
            (observed.as_deref(), n),
        )
        .await;
        let Some(failure) = failure else {
            return result;
        };
        let again = n < retry.attempts
            && retry::retryable(failure, retry, policy, head.method())
            && body.replayable();
        if !again {
            return result;
        }
        if let Some(b) = &budget
            && !b.try_withdraw(&policy.budget, Instant::now())
        {
            *budget_exhausted = true;
            ctx.metrics
                .retry_budget_exhausted
                .get_or_create(&retry_labels(plan))
                .inc();
            debug!(?failure, "retry budget exhausted: not retrying");
            return result;
        }
        n += 1;
        debug!(?failure, attempt = n + 1, "retrying");
        previous = Some(result);
        tokio::time::sleep(retry::backoff(
            retry.backoff,
            n,
            crate::backoff::random_fraction(),
        ))
        .await;
    }
}

fn retry_labels(plan: &Plan) -> RetryLabels {
    RetryLabels {
        backend: plan.backend.to_string(),
        route: plan.route_label(),
    }
}

/// An endpoint of the plan's backend, as the balancer chooses, avoiding `tried` if it can.
pub(crate) fn pick<'p>(
    state: &Arc<ServiceState>,
    plan: &'p Plan,
    tried: &[SocketAddr],
) -> Result<Lease<'p>, ProxyError> {
    state.pick(
        &plan.traffic,
        &plan.endpoints.endpoints,
        tried,
        Instant::now(),
        &mut crate::backoff::random_fraction,
    )
}

/// Ends an attempt (a request, or a connection for opaque streams and upgrades): its latency
/// and outcome go to the balancer, and an ejection or return it causes is logged and counted.
pub(crate) fn finish(ctx: &Ctx, plan: &Plan, lease: Lease<'_>, outcome: Outcome) {
    let endpoint = lease.endpoint.address;
    match lease.finish(outcome, &plan.traffic.outlier_detection, Instant::now()) {
        Ejection::Ejected { for_ } => {
            info!(
                backend = %plan.backend,
                %endpoint,
                for_ = %humantime::format_duration(for_),
                "endpoint ejected after consecutive failures"
            );
            ctx.metrics
                .ejections
                .get_or_create(&EjectionLabels {
                    backend: plan.backend.to_string(),
                })
                .inc();
        }
        Ejection::Returned => {
            info!(backend = %plan.backend, %endpoint, "endpoint returned to rotation after a successful probe");
        }
        Ejection::None => {}
    }
}

fn clone_head(head: &Request<()>) -> Request<()> {
    let mut r = Request::new(());
    *r.method_mut() = head.method().clone();
    *r.uri_mut() = head.uri().clone();
    *r.version_mut() = head.version();
    *r.headers_mut() = head.headers().clone();
    r
}

/// One attempt: send to the leased endpoint, wait for the response headers within the per-try
/// timeout, classify. Returns the result and, if it failed, how.
/// `peek_grpc`: the route retries gRPC statuses, so look for one.
async fn attempt(
    ctx: &Ctx,
    plan: &Plan,
    lease: Lease<'_>,
    head: Request<()>,
    body: Body,
    peek_grpc: bool,
    (observed, retry): (Option<&Exchange>, u32),
) -> (Result<Response<Body>, ProxyError>, Option<Failure>) {
    let endpoint = lease.endpoint;
    let (mut parts, ()) = head.into_parts();
    // A traced request: this attempt's CLIENT span, named as the parent of what it sends.
    // Boxed: untraced attempts' futures stay the size they were.
    let span = match observed.and_then(|x| Some((x, x.trace?, x.observe.tracer.as_ref()?))) {
        Some((x, parent, tracer)) => {
            let (span, header) = parent.child();
            parts.headers.insert(TRACEPARENT, header);
            Some(Box::new((x, tracer, span)))
        }
        None => None,
    };
    let req = Request::from_parts(parts, body);
    // `Err(None)`: the per-try timeout ran out; `Err(Some(e))`: the exchange failed.
    let outcome: Result<(Response<Body>, Option<u16>), Option<ProxyError>> =
        match plan.timeouts.backend_request {
            Some(limit) => {
                match tokio::time::timeout(limit, exchange(ctx, endpoint, req, peek_grpc)).await {
                    Ok(r) => r.map_err(Some),
                    Err(_) => Err(None),
                }
            }
            None => exchange(ctx, endpoint, req, peek_grpc).await.map_err(Some),
        };
    let (result, failure) = match outcome {
        Err(None) => {
            let limit = plan.timeouts.backend_request.unwrap_or_default();
            let e = ProxyError::Timeout(format!(
                "{} ({}) sent no response within the per-try timeout {}",
                plan.backend,
                endpoint.address,
                humantime::format_duration(limit)
            ));
            (Err(e), Some(Failure::Timeout))
        }
        Ok((resp, grpc)) => {
            let status = resp.status().as_u16();
            let failure = match grpc {
                // A server proxy's policy said no: retrying would only be refused again.
                Some(code) if code != 0 && crate::error::is_policy_refusal(resp.headers()) => None,
                Some(code) if code != 0 => Some(Failure::Grpc(code)),
                _ if status >= 500 => Some(Failure::Status(status)),
                _ => None,
            };
            (Ok(resp), failure)
        }
        // The request itself is at fault: not the endpoint's failure, nor one to retry.
        Err(Some(e @ ProxyError::BadRequest(_))) => (Err(e), None),
        Err(Some(e)) => {
            let failure = match &e {
                // A connect or handshake timeout: nothing was sent either.
                ProxyError::ConnectFailed { .. }
                | ProxyError::TlsIdentityMismatch { .. }
                | ProxyError::Timeout(_) => Failure::ConnectFailure,
                ProxyError::Upstream { refused: true, .. } => Failure::RefusedStream,
                _ => Failure::Reset,
            };
            (Err(e), Some(failure))
        }
    };
    // Outlier detection counts transport failures and 5xx (not gRPC statuses: the server
    // answered).
    let bad = match failure {
        None | Some(Failure::Grpc(_)) => Outcome::Success,
        Some(_) => Outcome::Failure,
    };
    if let Some(traced) = span {
        let (x, tracer, span) = *traced;
        tracer.submit(client_span(x, span, plan, endpoint, retry, &result));
    }
    finish(ctx, plan, lease, bad);
    (result, failure)
}

/// The CLIENT span of one attempt, ended as its response head (or failure) arrives.
fn client_span(
    x: &Exchange,
    span: OpenSpan,
    plan: &Plan,
    endpoint: &weft_proto::model::Endpoint,
    retry: u32,
    result: &Result<Response<Body>, ProxyError>,
) -> SpanRecord {
    let (status, grpc_status, reason) = match result {
        Ok(r) => (r.status().as_u16(), grpc_status(r.headers()), ""),
        Err(e) => (e.status().as_u16(), None, e.reason()),
    };
    let mut a = http_attributes(
        &x.method,
        &x.authority,
        &x.path,
        result.is_ok().then_some(status),
        x.grpc,
        grpc_status,
    );
    a.push((
        "network.peer.address",
        endpoint.address.ip().to_string().into(),
    ));
    let error = error_type(Kind::Client, status, reason).or_else(|| grpc_error(grpc_status));
    if let Some(e) = &error {
        a.push(("error.type", e.as_str().into()));
    }
    let route = plan.route_label();
    let backend = plan.backend.to_string();
    let name = format!(
        "{} {}",
        x.method,
        if route.is_empty() { &backend } else { &route }
    );
    a.push(("weft.route", Value::Str(route)));
    a.push(("weft.backend", Value::Str(backend)));
    a.push(("weft.endpoint", endpoint.address.to_string().into()));
    a.push(("weft.client_id", x.observe.own_id.as_str().into()));
    a.push(("weft.server_id", endpoint.identity.to_string().into()));
    a.push(("weft.retry", i64::from(retry + 1).into()));
    if !reason.is_empty() {
        a.push(("weft.error", reason.into()));
    }
    span.end(Kind::Client, name, a, error)
}

/// Sends the request to the endpoint and waits for the response head.
async fn exchange(
    ctx: &Ctx,
    endpoint: &weft_proto::model::Endpoint,
    req: Request<Body>,
    peek_grpc: bool,
) -> Result<(Response<Body>, Option<u16>), ProxyError> {
    let resp = ctx
        .peers
        .send(endpoint.address, &endpoint.identity, req)
        .await?;
    if peek_grpc {
        Ok(peek_grpc_status(resp))
    } else {
        Ok((resp.map(BodyExt::boxed), None))
    }
}

/// A gRPC status from the response headers (a trailers-only response), or else from the
/// trailers if they are the body's first frame and already here (an error without messages).
/// Never waits for the body: a streaming call's first message may be far off, and its headers
/// must reach the client now. The body is given back whole either way.
fn peek_grpc_status(resp: Response<ResponseBody>) -> (Response<Body>, Option<u16>) {
    let parse = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u16>().ok())
    };
    if let Some(code) = parse(resp.headers()) {
        return (resp.map(BodyExt::boxed), Some(code));
    }
    let (parts, mut body) = resp.into_parts();
    // Only what is already here: `None` means nothing has arrived yet.
    let Some(first) = body.frame().now_or_never() else {
        return (Response::from_parts(parts, body.boxed()), None);
    };
    let code = match &first {
        Some(Ok(f)) => f.trailers_ref().and_then(parse),
        _ => None,
    };
    let rest = http_body_util::BodyStream::new(body);
    let stream = futures_util::stream::iter(first).chain(rest);
    let body = BodyExt::boxed(StreamBody::new(stream));
    (Response::from_parts(parts, body), code)
}
