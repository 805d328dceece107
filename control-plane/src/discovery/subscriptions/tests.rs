use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

const TY: ResourceType = ResourceType::Service;
const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
/// Body size by version, so that together they cross [`RESPONSE_BYTES`] in various ways.
const SIZES: [usize; 4] = [10, 700, 2_500, 3_900];

fn resource(name: &str, version: u8) -> Arc<Resource> {
    Arc::new(Resource {
        name: name.to_owned(),
        version: format!("v{version}"),
        body: prost_types::Any {
            type_url: TY.type_url().to_owned(),
            value: vec![version; SIZES[usize::from(version)]],
        },
    })
}

/// `versions[i]`: the version of `NAMES[i]`, or no such resource.
fn snapshot(generation: u64, versions: &[Option<u8>], prev: &Snapshot) -> Snapshot {
    let services: ResourceMap = NAMES
        .iter()
        .zip(versions)
        .filter_map(|(n, v)| Some(((*n).to_owned(), resource(n, (*v)?))))
        .collect();
    let changed = NAMES
        .iter()
        .filter(|n| {
            let now = services.get(**n).map(|r| &r.version);
            now != prev.services.get(**n).map(|r| &r.version)
        })
        .map(|n| (TY, (*n).to_owned()))
        .collect();
    Snapshot {
        generation,
        system_version: format!("g{generation}"),
        services: Arc::new(services),
        changed: Arc::new(changed),
        ..Snapshot::default()
    }
}

/// A client as the protocol defines it: what it subscribed to and what it holds.
#[derive(Debug, Default)]
struct Client {
    wildcard: bool,
    names: BTreeSet<String>,
    view: BTreeMap<String, String>,
}

impl Client {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    fn request(&mut self, subscribe: &[String], unsubscribe: &[String]) {
        for n in subscribe {
            if n == "*" {
                self.wildcard = true;
            } else {
                self.names.insert(n.clone());
            }
        }
        for n in unsubscribe {
            if n == "*" {
                self.wildcard = false;
            } else {
                self.names.remove(n);
            }
        }
        // A client forgets what it no longer subscribes to.
        let keep: BTreeMap<_, _> = std::mem::take(&mut self.view)
            .into_iter()
            .filter(|(n, _)| self.wants(n))
            .collect();
        self.view = keep;
    }

    /// Applies every queued response; returns the names announced as removed. Fails on a
    /// response over the size bound or one resending what the client holds.
    fn receive(&mut self, subs: &mut Subscriptions) -> Result<BTreeSet<String>, TestCaseError> {
        let mut removed = BTreeSet::new();
        while let Some(out) = subs.pop() {
            let bytes: usize = out.resources.iter().map(|r| wire_size(r)).sum::<usize>()
                + out.removed.iter().map(String::len).sum::<usize>();
            prop_assert!(
                bytes <= RESPONSE_BYTES || out.resources.len() == 1,
                "a response of {bytes} bytes with {} resources",
                out.resources.len()
            );
            prop_assert!(!out.resources.is_empty() || !out.removed.is_empty());
            for r in &out.resources {
                prop_assert_ne!(
                    self.view.get(&r.name),
                    Some(&r.version),
                    "resent {} it already holds",
                    r.name
                );
                self.view.insert(r.name.clone(), r.version.clone());
            }
            for n in out.removed {
                self.view.remove(&n);
                removed.insert(n);
            }
        }
        Ok(removed)
    }

    /// What the client must hold of `snap`.
    fn expected(&self, snap: &Snapshot) -> BTreeMap<String, String> {
        snap.services
            .iter()
            .filter(|(n, _)| self.wants(n))
            .map(|(n, r)| (n.clone(), r.version.clone()))
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// The next snapshot; `skip`: the stream missed the one before it.
    Snapshot {
        versions: Vec<Option<u8>>,
        skip: bool,
    },
    Request {
        subscribe: Vec<String>,
        unsubscribe: Vec<String>,
    },
    /// A new stream, reporting what the client holds (one version falsified when `lie`).
    Reconnect { lie: Option<usize> },
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        5 => prop::sample::select(&NAMES[..]).prop_map(str::to_owned),
        1 => Just("*".to_owned()),
    ]
}

fn versions() -> impl Strategy<Value = Vec<Option<u8>>> {
    prop::collection::vec(prop::option::of(0u8..4), NAMES.len())
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (versions(), any::<bool>()).prop_map(|(versions, skip)| Op::Snapshot { versions, skip }),
        3 => (
            prop::collection::vec(name(), 0..3),
            prop::collection::vec(name(), 0..3),
        )
            .prop_map(|(subscribe, unsubscribe)| Op::Request { subscribe, unsubscribe }),
        1 => prop::option::of(0..NAMES.len()).prop_map(|lie| Op::Reconnect { lie }),
    ]
}

/// The first request of a stream: `subscribe` empty is the legacy wildcard.
fn first_request(
    subs: &mut Subscriptions,
    client: &Client,
    snap: &Snapshot,
) -> Result<(), TestCaseError> {
    let mut subscribe: Vec<String> = client.names.iter().cloned().collect();
    if client.wildcard && !subscribe.is_empty() {
        subscribe.push("*".to_owned());
    }
    prop_assert!(client.wildcard || !subscribe.is_empty() || client.view.is_empty());
    subs.on_request(TY, subscribe, vec![], client.view.clone(), snap);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the sequence of snapshots, subscription changes and reconnects, after each step
    /// the client holds exactly what it wants of the latest snapshot, was never sent a version it
    /// held, was told about subscribed names that do not exist, and no response was over the
    /// size bound unless it carried a single resource.
    #[test]
    fn the_client_ends_each_step_holding_exactly_what_it_wants(
        wildcard in any::<bool>(),
        initial in prop::collection::btree_set(prop::sample::select(&NAMES[..]), 1..4),
        first in versions(),
        ops in prop::collection::vec(op(), 1..25),
    ) {
        let mut snap = snapshot(1, &first, &Snapshot::default());
        let mut client = Client {
            wildcard,
            names: if wildcard { BTreeSet::new() } else { initial.iter().map(|n| (*n).to_owned()).collect() },
            ..Client::default()
        };
        let mut subs = Subscriptions::default();
        first_request(&mut subs, &client, &snap)?;
        client.receive(&mut subs)?;
        prop_assert_eq!(&client.view, &client.expected(&snap));

        for op in ops {
            match op {
                Op::Snapshot { versions, skip } => {
                    let generation = snap.generation + 1 + u64::from(skip);
                    snap = snapshot(generation, &versions, &snap);
                    subs.on_snapshot(&snap, !skip, None, None);
                    client.receive(&mut subs)?;
                }
                Op::Request { subscribe, unsubscribe } => {
                    let new: Vec<String> = subscribe
                        .iter()
                        .filter(|n| *n != "*" && !client.names.contains(*n) && !unsubscribe.contains(n))
                        .cloned()
                        .collect();
                    client.request(&subscribe, &unsubscribe);
                    subs.on_request(TY, subscribe, unsubscribe, BTreeMap::new(), &snap);
                    let removed = client.receive(&mut subs)?;
                    for n in new.iter().filter(|n| !snap.services.contains_key(*n)) {
                        prop_assert!(removed.contains(n), "{} was subscribed and does not exist, but not announced", n);
                    }
                }
                Op::Reconnect { lie } => {
                    if let Some(i) = lie
                        && client.wants(NAMES[i])
                    {
                        client.view.insert(NAMES[i].to_owned(), "stale".to_owned());
                    }
                    if !client.wildcard && client.names.is_empty() {
                        // Nothing to subscribe to: a first request naming nothing is a wildcard.
                        continue;
                    }
                    subs = Subscriptions::default();
                    first_request(&mut subs, &client, &snap)?;
                    client.receive(&mut subs)?;
                }
            }
            prop_assert_eq!(&client.view, &client.expected(&snap));
        }
    }
}

#[test]
fn a_large_sync_is_split_and_an_oversized_resource_goes_whole() {
    let mut services = ResourceMap::new();
    for i in 0..10u8 {
        let r = resource(&format!("s{i}"), 1);
        services.insert(r.name.clone(), r);
    }
    let big = Arc::new(Resource {
        name: "big".into(),
        version: "v9".into(),
        body: prost_types::Any {
            type_url: TY.type_url().to_owned(),
            value: vec![0; 3 * RESPONSE_BYTES],
        },
    });
    services.insert("big".into(), big);
    let snap = Snapshot {
        generation: 1,
        services: Arc::new(services),
        ..Snapshot::default()
    };
    let mut subs = Subscriptions::default();
    subs.on_request(TY, vec![], vec![], BTreeMap::new(), &snap);
    let responses: Vec<Outgoing> = std::iter::from_fn(|| subs.pop()).collect();
    let sizes: Vec<usize> = responses.iter().map(|o| o.resources.len()).collect();
    // "big" sorts first and goes alone; 10 × ~750 bytes go 5 to a response.
    assert_eq!(sizes, [1, 5, 5], "{responses:?}");
    assert_eq!(responses[0].resources[0].name, "big");
}
