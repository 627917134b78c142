//! Property tests (proptest) of everything that parses outside input: ring
//! buffer records, tracepoint format files and the configuration file, and
//! the model and detectors fed arbitrary event sequences. None may panic;
//! bad input is an error value. The seed corpus is the repository's own
//! data (stored format files, the default configuration); proptest keeps
//! any failing case in `proptest-regressions/` beside this file.
use proptest::prelude::*;
use tcpwatch::{
    findings::detect::{Detectors, Thresholds},
    kernel::event::{decode, EventKind, OwnerSource, TcpEvent, TcpState},
    kernel::tracefs::{self, Format},
    model::{Limits, Model},
    serve::config::Config,
};

type LayoutBuilder = fn(&Format) -> Result<tcpwatch_common::TpLayout, tracefs::LayoutError>;

const EVENT_BYTES: usize = std::mem::size_of::<tcpwatch_common::Event>();

fn seed_formats() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/formats-6.18");
    std::fs::read_dir(dir)
        .expect("stored formats are in the repository")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect()
}

fn seed_config() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/tcpwatch.toml"
    ))
    .expect("the default configuration is in the repository")
}

/// `text` with `edits` applied: (position, replacement byte) pairs.
fn mutate(text: &str, edits: &[(usize, u8)]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for (at, byte) in edits {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = *byte;
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    /// Any record, of any length and content, decodes or is rejected.
    #[test]
    fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2 * EVENT_BYTES)) {
        if let Ok(ev) = decode(&bytes) {
            prop_assert!(bytes.len() >= EVENT_BYTES);
            // Whatever decoded renders as JSON without panicking.
            let _ = serde_json::to_string(&ev.comm);
        }
    }

    /// Format files, real ones with bytes changed or arbitrary text, parse
    /// or fail, and the layouts built from them check every offset.
    #[test]
    fn format_parsing_never_panics(
        pick in 0usize..64,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        noise in ".{0,300}",
    ) {
        let seeds = seed_formats();
        let text = if pick < seeds.len() { mutate(&seeds[pick], &edits) } else { noise };
        if let Ok(f) = Format::parse(&text) {
            let builders: [LayoutBuilder; 5] = [
                tracefs::set_state,
                tracefs::retransmit_skb,
                tracefs::retransmit_synack,
                tracefs::send_reset,
                tracefs::event_sk,
            ];
            for build in builders {
                if let Ok(l) = build(&f) {
                    for offset in [l.skaddr, l.state, l.sport, l.saddr, l.daddr, l.saddr_v6] {
                        prop_assert!(
                            offset == tcpwatch_common::FIELD_ABSENT
                                || (offset as usize) < tcpwatch_common::RECORD_BYTES
                        );
                    }
                }
            }
            let _ = f.symbols("reason");
            let _ = tracefs::syscall_ret(&f);
        }
    }

    /// The configuration file: edited or arbitrary, accepted or refused in
    /// one line that names the file.
    #[test]
    fn config_parsing_never_panics(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        noise in ".{0,200}",
        use_noise in any::<bool>(),
    ) {
        let text = if use_noise { noise } else { mutate(&seed_config(), &edits) };
        if let Err(e) = Config::parse(&text, "fuzz.toml") {
            let message = e.to_string();
            prop_assert!(message.contains("fuzz.toml"), "{message}");
            prop_assert!(!message.contains('\n'), "{message}");
        }
    }

    /// Arbitrary event sequences (any states, kinds, sockets, times, in any
    /// order) never panic the model or the detectors, and the model stays
    /// within its bounds.
    #[test]
    fn the_model_survives_any_event_sequence(
        events in proptest::collection::vec(
            (0u8..7, 0u8..13, 0u8..13, 0u64..8, 0u64..200_000, 0u16..4, any::<bool>()),
            0..300,
        )
    ) {
        let limits = Limits { max_connections: 4, max_time_wait: 4 };
        let mut model = Model::new(limits).with_listen_overflow_reason(Some(2));
        let mut detectors = Detectors::new(Thresholds::default());
        let kinds = [
            EventKind::State,
            EventKind::Retransmit,
            EventKind::SynackRetransmit,
            EventKind::ResetSent,
            EventKind::ResetReceived,
            EventKind::State,
            EventKind::Drop,
        ];
        for (kind, old, new, sk, ms, port, v6) in events {
            let state = |n: u8| TcpState::try_from(n).ok();
            let ev = TcpEvent {
                ts_ns: ms * 1_000_000,
                skaddr: sk * 64,
                kind: kinds[kind as usize],
                pid: 1,
                comm: "fuzz".into(),
                owner: OwnerSource::Connect,
                netns: tcpwatch::tcp::NetnsId(1),
                saddr: if v6 { "::1".parse().unwrap() } else { "127.0.0.1".parse().unwrap() },
                sport: port,
                daddr: "127.0.0.2".parse().unwrap(),
                dport: 80,
                old_state: state(old),
                new_state: state(new),
                old_state_ns: Some(ms),
                reason: port % 3,
                owner_exiting: sk % 3 == 0,
                outstanding: (sk % 5 == 0).then_some(sk % 2 == 0),
                silence_s: (sk % 4 == 0).then_some((ms % 10) as u16),
                cgroup: sk % 5,
                ..TcpEvent::blank()
            };
            let outcomes = model.apply(&ev);
            let _ = detectors.on_event(&ev, &outcomes, &model);
            let _ = model.expire(ev.ts_ns);
            let _ = detectors.tick(ev.ts_ns, &model);
            prop_assert!(model.connections().count() <= 2 * limits.max_connections);
            prop_assert!(model.time_wait().count() <= limits.max_time_wait);
        }
    }
}
