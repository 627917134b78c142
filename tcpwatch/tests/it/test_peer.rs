//! The test peer's helper roles (`tcpwatch-test-peer --role ROLE`,
//! test-peer/roles.rs), unprivileged: a helper that did not do what it was
//! asked must say so (a non-zero exit), or the test that spawned it
//! passes without its scenario having happened.

use std::process::{Command, Stdio};

use crate::common::PEER;

fn role(name: &str) -> std::process::Output {
    Command::new(PEER)
        .args(["--role", name])
        .stdin(Stdio::null())
        .output()
        .expect("the test peer runs")
}

/// A role name the peer does not know (a typo in a test, or a role renamed
/// on one side only) falls through every `strip_prefix` of
/// `attribution_role` and exits 0 having printed nothing; a pre-fork mode
/// it does not know runs as `send`.
#[test]
fn an_unknown_role_or_mode_fails() {
    for name in ["giveup-7", "hogs:10", "prefork:fil"] {
        let out = role(name);
        assert!(
            !out.status.success(),
            "`tcpwatch-test-peer --role {name}` exited {:?} (stdout {:?}): a helper that does not exist passes as one that ran",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// `giveup:PORT` exists to leave an orphan retransmitting towards a
/// black-holed server; when its connect fails it returns at once with
/// status 0, so `clients_giving_up_on_a_dead_server_do_not_stall_the_daemon`
/// (which ignores the clients' exit status and output, and checks only
/// /healthz latency) passes with no orphan at all.
#[test]
fn a_giveup_client_that_never_connected_does_not_exit_0() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let out = role(&format!("giveup:{port}"));
    assert!(
        !out.status.success(),
        "`--role giveup:{port}` with nothing listening exited {:?}: the client never connected, sent or gave up, yet reports success",
        out.status
    );
}
