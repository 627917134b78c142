//! `tcpwatch top` as a person sees it: run in tmux, read the screen.

use std::{process::Command, thread, time::Duration};

use crate::common::*;

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn top_shows_states_close_wait_by_process_and_findings() {
    if !privileged_or_skip("top_shows_states_close_wait_by_process_and_findings") {
        return;
    }
    let ns = Netns::new("top");
    let mut leaky = ns.peer("tw-leaky");
    let mut closer = ns.peer("tw-closer");
    let mut client = ns.peer("tw-client");
    let leaky_port: u16 = leaky.ok("listen 127.0.0.1 16").parse().unwrap();
    let closer_port: u16 = closer.ok("listen 127.0.0.1 16").parse().unwrap();

    let session = format!("tcpwatch-top-{}", std::process::id());
    let command = format!(
        "{} top --netns {} --close-wait-age 1s --time-wait-count 2 --refresh 300ms --reconcile-interval 1s",
        env!("CARGO_BIN_EXE_tcpwatch"),
        ns.inode
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "160",
        "-y",
        "45",
        &command,
    ]);
    let screen = || tmux(&["capture-pane", "-t", &session, "-p"]);
    assert!(
        wait_until(Duration::from_secs(10), || screen()
            .contains("tcpwatch top")),
        "{}",
        screen()
    );

    // Two connections the leaky server never closes, two the other server closes first.
    for _ in 0..2 {
        client.ok(&format!("connect 127.0.0.1 {leaky_port}"));
        leaky.ok("accept");
        client.ok("close");
        leaky.ok("keep");
        server_closes_first(&mut client, &mut closer, "127.0.0.1", closer_port);
    }
    // The clients' sockets towards the leaky server are orphans in
    // FIN_WAIT2, not TIME_WAIT: the screen settles once sock_diag said so.
    let ready = || {
        let s = screen();
        s.contains("close_wait_leak")
            && s.contains("time_wait_buildup")
            && s.contains("Open findings (2)")
    };
    let shown = wait_until(Duration::from_secs(10), ready);
    let text = screen();
    assert!(shown, "{text}");

    assert!(text.contains("Sockets by state"), "{text}");
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let words = |l: String| {
        l.split(|c: char| c.is_whitespace() || c == '│')
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // A row of the "Sockets by state" box, the left one of its line.
    let state_row = |state: &str| {
        text.lines()
            .filter_map(|l| l.split("││").next())
            .map(|left| words(left.to_owned()))
            .find(|w| w.first().map(String::as_str) == Some(state))
            .unwrap_or_default()
    };
    assert_eq!(state_row("CLOSE_WAIT"), ["CLOSE_WAIT", "2"], "{text}");
    assert_eq!(state_row("TIME_WAIT"), ["TIME_WAIT", "2"], "{text}");
    assert_eq!(state_row("FIN_WAIT2"), ["FIN_WAIT2", "2"], "{text}");
    assert_eq!(ns.sockets("time-wait", &[]), 2, "ground truth");
    assert_eq!(ns.sockets("fin-wait-2", &[]), 2, "ground truth");
    // The CLOSE_WAIT table names the leaking process, its unit (whatever
    // cgroup the test runs in; `-` when it names none) and its port.
    let row = words(line("tw-leaky"));
    assert_eq!(
        [&row[..2], &row[3..5]].concat(),
        [
            leaky.pid.to_string(),
            "tw-leaky".into(),
            leaky_port.to_string(),
            "2".into()
        ],
        "{text}"
    );
    // TIME_WAIT is on the server side of the closer's port.
    assert_eq!(
        words(line(&format!("server :{closer_port}")))
            .last()
            .map(String::as_str),
        Some("2"),
        "{text}"
    );
    assert!(text.contains("Open findings (2)"), "{text}");
    // Listeners are counted with the other states.
    assert_eq!(state_row("LISTEN"), ["LISTEN", "2"], "{text}");

    // Enter shows the selected finding's evidence and remedy; Down selects
    // the next one.
    let details_of = |text: &str| -> Option<String> {
        text.lines()
            .find(|l| l.contains("(netns "))
            .map(|l| l.to_owned())
    };
    tmux(&["send-keys", "-t", &session, "Enter"]);
    assert!(
        wait_until(Duration::from_secs(5), || {
            let s = screen();
            s.contains("Remedy:") && s.contains("Evidence:")
        }),
        "{}",
        screen()
    );
    let first = details_of(&screen()).unwrap_or_default();
    assert!(first.contains("warning"), "{first}");
    tmux(&["send-keys", "-t", &session, "Down"]);
    assert!(
        wait_until(Duration::from_secs(5), || {
            details_of(&screen()).is_some_and(|d| d != first)
        }),
        "{}",
        screen()
    );
    let shown: Vec<String> = [first, details_of(&screen()).unwrap_or_default()].into();
    assert!(
        shown.iter().any(|d| d.contains("close_wait_leak"))
            && shown.iter().any(|d| d.contains("time_wait_buildup")),
        "{shown:?}"
    );
    // The leak's remedy, in full.
    assert!(screen().contains("Remedy:"));
    tmux(&["send-keys", "-t", &session, "Escape"]);
    assert!(
        wait_until(Duration::from_secs(5), || !screen().contains("Remedy:")),
        "{}",
        screen()
    );

    // `q` quits and gives the terminal back.
    tmux(&["send-keys", "-t", &session, "q"]);
    let gone = wait_until(Duration::from_secs(5), || {
        !Command::new("tmux")
            .args(["has-session", "-t", &session])
            .status()
            .is_ok_and(|s| s.success())
    });
    if !gone {
        tmux(&["kill-session", "-t", &session]);
    }
    assert!(gone, "tcpwatch top did not quit on q");
    thread::sleep(Duration::from_millis(100));
}
