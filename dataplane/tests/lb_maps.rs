//! The service table against the kernel's maps: what `apply` and `remove` leave in them,
//! and that unchanged input writes nothing.

use std::net::Ipv4Addr;

use skiff_dataplane::maps::SVC_SCOPE_CLUSTER;
use skiff_dataplane::{DataPlane, Endpoint, Frontend, LbService, Proto};

fn svc(i: u32, backends: u8) -> LbService {
    LbService {
        frontends: vec![Frontend {
            addr: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i),
            port: 80,
            proto: Proto::Tcp,
            scope: SVC_SCOPE_CLUSTER,
        }],
        endpoints: (0..backends)
            .map(|b| Endpoint {
                addr: Ipv4Addr::new(198, 18, (i % 200) as u8 + 10, b + 1),
                port: 8080,
                ready: true,
                serving: true,
                terminating: false,
            })
            .collect(),
        affinity_timeout: None,
    }
}

#[test]
fn unchanged_input_writes_nothing_and_changes_write_only_their_entries() {
    let mut dp = DataPlane::load().expect("load");
    let mut lb = dp.load_balancer().expect("maps");
    lb.apply("a", &svc(1, 3)).expect("apply");
    // 3 backends + 3 slots + 1 frontend.
    assert_eq!(lb.writes, 7);
    lb.apply("a", &svc(1, 3)).expect("apply");
    assert_eq!(
        lb.writes, 7,
        "re-applying the same service wrote to the maps"
    );

    // A second frontend (say a NodePort) adds one entry; the backend set is untouched.
    let mut two = svc(1, 3);
    two.frontends.push(Frontend {
        port: 8443,
        ..two.frontends[0]
    });
    lb.apply("a", &two).expect("apply");
    assert_eq!(lb.writes, 8);
    assert_eq!(lb.entries().expect("entries"), (2, 3, 3));

    // One more backend: its entry, the 4 slots of the new generation, 2 frontend flips,
    // and the 3 old slots removed.
    let mut four = svc(1, 4);
    four.frontends = two.frontends.clone();
    lb.apply("a", &four).expect("apply");
    assert_eq!(lb.writes, 8 + 1 + 4 + 2 + 3);
    assert_eq!(lb.entries().expect("entries"), (2, 4, 4));
}

#[test]
fn a_thousand_services_converge_and_leave_nothing_when_removed() {
    let mut dp = DataPlane::load().expect("load");
    let mut lb = dp.load_balancer().expect("maps");
    for i in 0..1000 {
        lb.apply(&format!("svc-{i}"), &svc(i, 10)).expect("apply");
    }
    // Backends are shared between services with the same address (i % 200).
    assert_eq!(lb.entries().expect("entries"), (1000, 10_000, 2000));
    for i in (0..1000).step_by(2) {
        lb.apply(&format!("svc-{i}"), &svc(i, 5)).expect("shrink");
    }
    // Every service of an even address group shrank: those groups keep 5 backends of 10.
    assert_eq!(lb.entries().expect("entries"), (1000, 7500, 1500));
    for i in 0..1000 {
        lb.remove(&format!("svc-{i}")).expect("remove");
    }
    assert_eq!(lb.entries().expect("entries"), (0, 0, 0));
}
