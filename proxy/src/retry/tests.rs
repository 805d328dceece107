#![allow(clippy::unwrap_used)]

use super::*;

fn retry(codes: &[u16]) -> Retry {
    Retry {
        codes: codes.to_vec(),
        attempts: 3,
        backoff: Duration::from_millis(25),
    }
}

fn policy(on: &[RetryOn], grpc: &[u16], non_idempotent: bool) -> RetryPolicy {
    RetryPolicy {
        on: on.to_vec(),
        grpc_on: grpc.to_vec(),
        non_idempotent,
        budget: RetryBudget::default(),
    }
}

#[test]
fn what_is_retried_for_which_method() {
    use Failure::*;
    let default = RetryPolicy::default();
    let gateway = policy(&[RetryOn::GatewayError, RetryOn::Reset], &[14], false);
    let any_5xx = policy(&[RetryOn::ServerError], &[], false);
    let post_ok = policy(&[RetryOn::ServerError], &[], true);
    let (get, post, put) = (Method::GET, Method::POST, Method::PUT);
    // (failure, codes, policy, method, retried)
    let table: &[(Failure, &[u16], &RetryPolicy, &Method, bool)] = &[
        // Nothing reached the application: any method, by default.
        (ConnectFailure, &[], &default, &post, true),
        (RefusedStream, &[], &default, &post, true),
        // The default retries no response and no reset.
        (Status(503), &[], &default, &get, false),
        (Reset, &[], &default, &get, false),
        // Gateway API codes alone.
        (Status(503), &[503], &default, &get, true),
        (Status(500), &[503], &default, &get, false),
        // gateway-error is 502..=504.
        (Status(502), &[], &gateway, &get, true),
        (Status(504), &[], &gateway, &put, true),
        (Status(500), &[], &gateway, &get, false),
        (Reset, &[], &gateway, &get, true),
        // gRPC calls are POSTs: a listed status is retried whatever the method.
        (Grpc(14), &[], &gateway, &post, true),
        (Grpc(14), &[], &gateway, &get, true),
        (Grpc(8), &[], &gateway, &get, false),
        // 5xx, and POST only with the opt-in.
        (Status(500), &[], &any_5xx, &get, true),
        (Status(503), &[], &any_5xx, &post, false),
        (Status(503), &[503], &default, &post, false),
        (Status(503), &[], &post_ok, &post, true),
        // A per-try timeout, for idempotent methods.
        (Timeout, &[], &default, &get, true),
        (Timeout, &[], &default, &post, false),
    ];
    for (i, (failure, codes, policy, method, want)) in table.iter().enumerate() {
        assert_eq!(
            retryable(*failure, &retry(codes), policy, method),
            *want,
            "row {i}: {failure:?} {codes:?} {method}"
        );
    }
}

#[test]
fn the_budget_caps_retries_at_the_ratio_plus_the_floor() {
    let budgets = Budgets::default();
    let b = budgets.route(&ObjectRef::new("default", "r"));
    let t0 = budgets.start;
    let ratio_only = RetryBudget {
        percent: 20,
        min_per_second: 0,
        window: Duration::from_secs(10),
    };
    let mut granted = 0;
    for _ in 0..100 {
        b.deposit(t0);
        if b.try_withdraw(&ratio_only, t0) {
            granted += 1;
        }
    }
    assert_eq!(granted, 20);

    // The floor: 10 per second over a 10 s window, on a fresh route.
    let b = budgets.route(&ObjectRef::new("default", "floor"));
    let floor = RetryBudget {
        percent: 0,
        min_per_second: 10,
        window: Duration::from_secs(10),
    };
    let granted = (0..1000).filter(|_| b.try_withdraw(&floor, t0)).count();
    assert_eq!(granted, 100);
    // The window slides: 10 s later the old retries no longer count.
    let later = t0 + Duration::from_secs(10);
    let granted = (0..1000).filter(|_| b.try_withdraw(&floor, later)).count();
    assert_eq!(granted, 100);
}

#[test]
fn backoff_doubles_within_jitter_and_is_capped() {
    let base = Duration::from_millis(100);
    assert_eq!(backoff(base, 1, 1.0), base);
    assert_eq!(backoff(base, 1, 0.0), base / 2);
    assert_eq!(backoff(base, 3, 1.0), base * 4);
    assert_eq!(backoff(base, 10, 1.0), base * 10);
}

#[tokio::test]
async fn small_bodies_replay_large_ones_go_once() {
    let mut small = RequestBody::new(crate::body::full("hello"));
    assert!(small.replayable());
    for _ in 0..3 {
        let b = small.take().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(&b[..], b"hello");
        assert!(small.replayable());
    }
    let big = Bytes::from(vec![0u8; REPLAY_LIMIT as usize + 1]);
    let mut once = RequestBody::new(crate::body::full(big));
    let sent = once.take().unwrap().collect().await.unwrap().to_bytes();
    assert_eq!(sent.len(), REPLAY_LIMIT as usize + 1);
    assert!(!once.replayable());
    assert!(once.take().is_none());
    // An empty body (a GET) is replayable at once, and ends at once.
    let mut empty = RequestBody::new(crate::body::empty());
    assert!(empty.take().unwrap().is_end_stream());
    assert!(empty.replayable());
    assert!(empty.take().unwrap().is_end_stream());
}

#[tokio::test]
async fn a_stream_not_yet_ended_cannot_be_replayed() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BodyError>>(4);
    let stream = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut body = RequestBody::new(BodyExt::boxed(stream));
    let mut first = body.take().unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
        .await
        .unwrap();
    let got = first.frame().await.unwrap().unwrap();
    assert_eq!(got.data_ref().unwrap().as_ref(), b"part");
    // The client has not finished: a retry now could not send the whole body.
    assert!(!body.replayable());
    drop(tx);
    assert!(first.frame().await.is_none());
    assert!(body.replayable());
    let again = body.take().unwrap().collect().await.unwrap().to_bytes();
    assert_eq!(&again[..], b"part");
}
