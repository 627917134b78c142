//! Discovery of tracepoint record layouts from tracefs format files.
//!
//! The kernel changes its tracepoint records between releases
//! (`tcp_retransmit_skb` gained `err` in 6.17, `tcp_send_reset` switched to
//! sockaddrs and a reason in 6.10), so the programs read every field at an
//! offset found here at start-up rather than one compiled in.
use std::collections::BTreeMap;

use tcpwatch_common::{FieldOffset, TpLayout, FIELD_ABSENT, RECORD_BYTES};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("tracepoint format has no `{0}` line")]
    MissingHeader(&'static str),
    #[error("malformed field line in tracepoint format: {0:?}")]
    BadField(String),
    #[error("tracepoint {tracepoint} has no field `{field}`")]
    MissingField {
        tracepoint: String,
        field: &'static str,
    },
    #[error("field `{field}` of tracepoint {tracepoint} is {found} bytes, expected {expected}")]
    FieldSize {
        tracepoint: String,
        field: &'static str,
        found: usize,
        expected: usize,
    },
    #[error(
        "field `{field}` of tracepoint {tracepoint} lies beyond the offsets the programs can read"
    )]
    FieldOffset {
        tracepoint: String,
        field: &'static str,
    },
}

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub c_type: String,
    pub offset: usize,
    pub size: usize,
    pub signed: bool,
}

/// A parsed tracepoint format file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub id: u32,
    pub fields: BTreeMap<String, Field>,
    pub print_fmt: String,
}

impl Format {
    /// Parses the text of `/sys/kernel/tracing/events/<category>/<name>/format`.
    pub fn parse(text: &str) -> Result<Self, LayoutError> {
        let mut format = Format::default();
        let mut saw_name = false;
        let mut saw_id = false;
        for line in text.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("name:") {
                format.name = name.trim().to_owned();
                saw_name = true;
            } else if let Some(id) = line.strip_prefix("ID:") {
                format.id = id
                    .trim()
                    .parse()
                    .map_err(|_| LayoutError::MissingHeader("ID"))?;
                saw_id = true;
            } else if let Some(rest) = line.strip_prefix("field:") {
                let (name, field) = parse_field(rest)?;
                format.fields.insert(name, field);
            } else if let Some(fmt) = line.strip_prefix("print fmt:") {
                format.print_fmt = fmt.trim().to_owned();
            }
        }
        if !saw_name {
            return Err(LayoutError::MissingHeader("name"));
        }
        if !saw_id {
            return Err(LayoutError::MissingHeader("ID"));
        }
        Ok(format)
    }

    fn offset(&self, name: &'static str, size: usize) -> Result<FieldOffset, LayoutError> {
        let field = self
            .fields
            .get(name)
            .ok_or_else(|| LayoutError::MissingField {
                tracepoint: self.name.clone(),
                field: name,
            })?;
        if field.size != size {
            return Err(LayoutError::FieldSize {
                tracepoint: self.name.clone(),
                field: name,
                found: field.size,
                expected: size,
            });
        }
        // The programs copy the record's first RECORD_BYTES and read fields
        // from that copy.
        if field.offset + field.size > RECORD_BYTES {
            return Err(LayoutError::FieldOffset {
                tracepoint: self.name.clone(),
                field: name,
            });
        }
        Ok(field.offset as FieldOffset)
    }

    fn optional(&self, name: &'static str, size: usize) -> Result<FieldOffset, LayoutError> {
        if self.fields.contains_key(name) {
            self.offset(name, size)
        } else {
            Ok(FIELD_ABSENT)
        }
    }

    /// The `{ value, "NAME" }` pairs of `__print_symbolic(REC->field, ...)`.
    pub fn symbols(&self, field: &str) -> BTreeMap<u32, String> {
        let mut out = BTreeMap::new();
        let needle = format!("__print_symbolic(REC->{field},");
        let Some(start) = self.print_fmt.find(&needle) else {
            return out;
        };
        let mut rest = &self.print_fmt[start + needle.len()..];
        // Pairs look like `{ 3, "TCP_RFC7323_PAWS" }` and end at the closing `)`.
        while let Some(open) = rest.find('{') {
            if rest[..open].contains(')') {
                break;
            }
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            let pair = &rest[open + 1..open + close];
            if let Some((value, name)) = pair.split_once(',') {
                if let Ok(value) = value.trim().parse::<u32>() {
                    out.insert(value, name.trim().trim_matches('"').to_owned());
                }
            }
            rest = &rest[open + close + 1..];
        }
        out
    }
}

fn parse_field(rest: &str) -> Result<(String, Field), LayoutError> {
    let bad = || LayoutError::BadField(rest.to_owned());
    let mut parts = rest.split(';').map(str::trim);
    let decl = parts.next().ok_or_else(bad)?;
    let mut offset = None;
    let mut size = None;
    let mut signed = false;
    for part in parts {
        if let Some(v) = part.strip_prefix("offset:") {
            offset = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("signed:") {
            signed = v == "1";
        }
    }
    // `__u8 saddr[4]` -> name `saddr`; `const void * skaddr` -> `skaddr`.
    let decl_no_array = decl.split('[').next().unwrap_or(decl).trim_end();
    let split_at = decl_no_array.rfind([' ', '*']).ok_or_else(bad)?;
    let name = decl_no_array[split_at + 1..].trim();
    if name.is_empty() {
        return Err(bad());
    }
    Ok((
        name.to_owned(),
        Field {
            c_type: decl_no_array[..split_at + 1].trim().to_owned(),
            offset: offset.ok_or_else(bad)?,
            size: size.ok_or_else(bad)?,
            signed,
        },
    ))
}

/// Ports, family and the two address arrays of the `TP_STORE_ADDRS` family
/// of tracepoints. The `tcp:*` tracepoints gained `family` in 5.12; before,
/// the programs read the socket's own family (see `family_without_field` in
/// the eBPF crate).
fn classic_endpoints(f: &Format, l: &mut TpLayout) -> Result<(), LayoutError> {
    l.sport = f.offset("sport", 2)?;
    l.dport = f.offset("dport", 2)?;
    l.family = f.optional("family", 2)?;
    l.saddr = f.offset("saddr", 4)?;
    l.daddr = f.offset("daddr", 4)?;
    l.saddr_v6 = f.offset("saddr_v6", 16)?;
    l.daddr_v6 = f.offset("daddr_v6", 16)?;
    Ok(())
}

/// `sock:inet_sock_set_state`.
pub fn set_state(f: &Format) -> Result<TpLayout, LayoutError> {
    let mut l = TpLayout::absent();
    l.skaddr = f.offset("skaddr", 8)?;
    l.state = f.offset("oldstate", 4)?;
    l.new_state = f.offset("newstate", 4)?;
    l.protocol = f.offset("protocol", 2)?;
    classic_endpoints(f, &mut l)?;
    Ok(l)
}

/// `tcp:tcp_retransmit_skb`; `err` exists from 6.17 on.
pub fn retransmit_skb(f: &Format) -> Result<TpLayout, LayoutError> {
    let mut l = TpLayout::absent();
    l.skaddr = f.offset("skaddr", 8)?;
    l.state = f.offset("state", 4)?;
    l.err = f.optional("err", 4)?;
    classic_endpoints(f, &mut l)?;
    Ok(l)
}

/// `tcp:tcp_retransmit_synack`.
pub fn retransmit_synack(f: &Format) -> Result<TpLayout, LayoutError> {
    let mut l = TpLayout::absent();
    l.skaddr = f.offset("skaddr", 8)?;
    classic_endpoints(f, &mut l)?;
    Ok(l)
}

/// `tcp:tcp_send_reset`: sockaddrs and a reason since 6.10, separate ports
/// and addresses before.
pub fn send_reset(f: &Format) -> Result<TpLayout, LayoutError> {
    let mut l = TpLayout::absent();
    l.skbaddr = f.optional("skbaddr", 8)?;
    l.skaddr = f.offset("skaddr", 8)?;
    l.state = f.optional("state", 4)?;
    l.reason = f.optional("reason", 4)?;
    if f.fields.contains_key("sport") {
        classic_endpoints(f, &mut l)?;
    } else {
        l.saddr = f.offset("saddr", 28)?;
        l.daddr = f.offset("daddr", 28)?;
        l.sockaddr = 1;
    }
    Ok(l)
}

/// `tcp:tcp_receive_reset` and `tcp:tcp_destroy_sock` (the `tcp_event_sk` class).
pub fn event_sk(f: &Format) -> Result<TpLayout, LayoutError> {
    let mut l = TpLayout::absent();
    l.skaddr = f.offset("skaddr", 8)?;
    classic_endpoints(f, &mut l)?;
    Ok(l)
}

/// `sock:sock_send_length` and `sock:sock_recv_length`: the socket and its
/// protocol.
pub fn sock_io(f: &Format) -> Result<TpLayout, LayoutError> {
    let mut l = TpLayout::absent();
    l.skaddr = f.offset("sk", 8)?;
    l.protocol = f.offset("protocol", 2)?;
    Ok(l)
}

/// `skb:kfree_skb`: the receiving socket (`rx_sk`, 6.12+) and the drop
/// reason (6.0+); `None` on kernels that lack either, where drops cannot
/// be told apart by socket.
pub fn kfree_skb(f: &Format) -> Result<Option<TpLayout>, LayoutError> {
    let mut l = TpLayout::absent();
    l.skbaddr = f.offset("skbaddr", 8)?;
    l.skaddr = f.optional("rx_sk", 8)?;
    l.reason = f.optional("reason", 4)?;
    Ok((l.skaddr != FIELD_ABSENT && l.reason != FIELD_ABSENT).then_some(l))
}

/// `syscalls:sys_exit_*`: the return value.
pub fn syscall_ret(f: &Format) -> Result<FieldOffset, LayoutError> {
    f.offset("ret", 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(path: &str) -> Format {
        let full = format!("{}/tests/data/{path}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&full).expect("test data is in the repository");
        Format::parse(&text).expect("test data parses")
    }

    #[test]
    fn parses_set_state_of_6_18() {
        let f = data("formats-6.18/sock__inet_sock_set_state");
        assert_eq!(f.name, "inet_sock_set_state");
        assert_eq!(f.id, 2287);
        let l = set_state(&f).unwrap();
        assert_eq!((l.skaddr, l.state, l.new_state), (8, 16, 20));
        assert_eq!((l.sport, l.dport, l.family, l.protocol), (24, 26, 28, 30));
        assert_eq!((l.saddr, l.daddr, l.saddr_v6, l.daddr_v6), (32, 36, 40, 56));
        assert_eq!(f.fields["saddr_v6"].c_type, "__u8");
        assert_eq!(f.fields["skaddr"].c_type, "const void *");
    }

    #[test]
    fn retransmit_skb_has_err_on_6_18_but_not_on_6_1() {
        let new = retransmit_skb(&data("formats-6.18/tcp__tcp_retransmit_skb")).unwrap();
        assert_eq!(new.err, 76);
        assert_eq!((new.skaddr, new.state, new.family), (16, 24, 32));
        let old = retransmit_skb(&data("formats-6.1/tcp__tcp_retransmit_skb")).unwrap();
        assert_eq!(old.err, FIELD_ABSENT);
        assert_eq!((old.skaddr, old.state, old.saddr_v6), (16, 24, 42));
    }

    #[test]
    fn send_reset_layouts_differ_between_6_1_and_6_18() {
        let new = send_reset(&data("formats-6.18/tcp__tcp_send_reset")).unwrap();
        assert_eq!(new.sockaddr, 1);
        assert_eq!(
            (new.saddr, new.daddr, new.reason, new.state),
            (32, 60, 28, 24)
        );
        assert_eq!(new.skbaddr, 8);
        assert_eq!(new.sport, FIELD_ABSENT);
        let old = send_reset(&data("formats-6.1/tcp__tcp_send_reset")).unwrap();
        assert_eq!(old.sockaddr, 0);
        assert_eq!(old.reason, FIELD_ABSENT);
        assert_eq!((old.sport, old.dport, old.saddr), (28, 30, 34));
    }

    #[test]
    fn receive_reset_destroy_and_synack() {
        let rr = event_sk(&data("formats-6.18/tcp__tcp_receive_reset")).unwrap();
        assert_eq!((rr.skaddr, rr.sport, rr.saddr_v6), (8, 16, 30));
        let ds = event_sk(&data("formats-6.18/tcp__tcp_destroy_sock")).unwrap();
        assert_eq!(ds.skaddr, 8);
        let sa = retransmit_synack(&data("formats-6.18/tcp__tcp_retransmit_synack")).unwrap();
        assert_eq!(
            (sa.skaddr, sa.sport, sa.saddr, sa.daddr_v6),
            (8, 24, 30, 54)
        );
    }

    #[test]
    fn syscall_exit_return_value() {
        let f = Format::parse(
            "name: sys_exit_accept4\nID: 2233\nformat:\n\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n",
        )
        .unwrap();
        assert_eq!(syscall_ret(&f), Ok(16));
        assert!(f.fields["ret"].signed);
    }

    #[test]
    fn reset_reasons_come_from_the_print_format() {
        let f = data("formats-6.18/tcp__tcp_send_reset");
        let reasons = f.symbols("reason");
        assert_eq!(reasons.get(&0).map(String::as_str), Some("NOT_SPECIFIED"));
        assert_eq!(
            reasons.get(&9).map(String::as_str),
            Some("TCP_TIMEWAIT_SOCKET")
        );
        assert_eq!(
            reasons.get(&12).map(String::as_str),
            Some("TCP_ABORT_ON_LINGER")
        );
        // The state table uses names, not numbers, and must not leak in.
        assert!(f.symbols("state").is_empty());
    }

    #[test]
    fn missing_or_resized_fields_are_errors() {
        let mut f = data("formats-6.18/sock__inet_sock_set_state");
        f.fields.remove("newstate");
        assert_eq!(
            set_state(&f),
            Err(LayoutError::MissingField {
                tracepoint: "inet_sock_set_state".into(),
                field: "newstate"
            })
        );
        let mut f = data("formats-6.18/sock__inet_sock_set_state");
        f.fields.get_mut("sport").unwrap().size = 4;
        assert!(matches!(
            set_state(&f),
            Err(LayoutError::FieldSize { found: 4, .. })
        ));
    }

    #[test]
    fn malformed_text_is_rejected() {
        assert_eq!(Format::parse(""), Err(LayoutError::MissingHeader("name")));
        assert_eq!(
            Format::parse("name: x\n"),
            Err(LayoutError::MissingHeader("ID"))
        );
        assert!(matches!(
            Format::parse("name: x\nID: 1\nfield:int ;\toffset:8;\tsize:4;\n"),
            Err(LayoutError::BadField(_))
        ));
        assert!(matches!(
            Format::parse("name: x\nID: 1\nfield:int a;\tsize:4;\n"),
            Err(LayoutError::BadField(_))
        ));
    }

    /// Every kernel whose format files are stored (captured in Debian's
    /// kernels by `cargo xtask vm-test --save-formats`): the layout of each
    /// tracepoint tcpwatch attaches to is discovered, with the fields each
    /// release has or lacks.
    #[test]
    fn layouts_of_every_stored_kernel() {
        let root = format!("{}/tests/data", env!("CARGO_MANIFEST_DIR"));
        let mut kernels: Vec<(u32, u32, String)> = std::fs::read_dir(&root)
            .expect("test data directory")
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let version = name.strip_prefix("formats-")?.to_owned();
                let (major, minor) = version.split_once('.')?;
                Some((major.parse().ok()?, minor.parse().ok()?, version))
            })
            .collect();
        kernels.sort();
        let whole: Vec<_> = kernels
            .iter()
            .filter(|(_, _, v)| {
                std::path::Path::new(&format!("{root}/formats-{v}/sock__inet_sock_set_state"))
                    .exists()
            })
            .collect();
        assert!(
            whole.len() >= 5,
            "format files of 5.10, 6.1, 6.12, 6.18 and 7.x are stored: {kernels:?}"
        );
        for (major, minor, version) in whole {
            let at = |name: &str| data(&format!("formats-{version}/{name}"));
            let newer = |m: u32, n: u32| (*major, *minor) >= (m, n);
            let ss = set_state(&at("sock__inet_sock_set_state")).unwrap();
            assert_ne!(ss.family, FIELD_ABSENT, "{version}");
            let rtx = retransmit_skb(&at("tcp__tcp_retransmit_skb")).unwrap();
            // `family` came to the tcp:* tracepoints in 5.12, `err` in 6.17.
            assert_eq!(rtx.family == FIELD_ABSENT, !newer(5, 12), "{version}");
            assert_eq!(rtx.err == FIELD_ABSENT, !newer(6, 17), "{version}");
            let synack = retransmit_synack(&at("tcp__tcp_retransmit_synack")).unwrap();
            assert_eq!(synack.family == FIELD_ABSENT, !newer(5, 12), "{version}");
            let rst = send_reset(&at("tcp__tcp_send_reset")).unwrap();
            // Sockaddrs and a reason since 6.10.
            assert_eq!(rst.sockaddr == 1, newer(6, 10), "{version}");
            assert_eq!(rst.reason == FIELD_ABSENT, !newer(6, 10), "{version}");
            for name in ["tcp__tcp_receive_reset", "tcp__tcp_destroy_sock"] {
                let l = event_sk(&at(name)).unwrap();
                assert_ne!(l.skaddr, FIELD_ABSENT, "{version} {name}");
            }
            for name in ["syscalls__sys_exit_accept", "syscalls__sys_exit_accept4"] {
                assert!(syscall_ret(&at(name)).is_ok(), "{version} {name}");
            }
            // Drops by socket: `rx_sk` from 6.12 (with the reason, from 6.0),
            // and the reason names the kernel's own table gives.
            let kfree = at("skb__kfree_skb");
            let drops = kfree_skb(&kfree).unwrap();
            assert_eq!(drops.is_some(), newer(6, 12), "{version}");
            if newer(6, 12) {
                let names = kfree.symbols("reason");
                assert!(
                    names.values().any(|n| n == "TCP_ZEROWINDOW"),
                    "{version}: {names:?}"
                );
                // TCP_LISTEN_OVERFLOW came in 6.15.
                assert_eq!(
                    names.values().any(|n| n == "TCP_LISTEN_OVERFLOW"),
                    newer(6, 15),
                    "{version}"
                );
            }
            // Attribution on use: sock_send_length/sock_recv_length from 6.2.
            for name in ["sock__sock_send_length", "sock__sock_recv_length"] {
                let path = format!("{root}/formats-{version}/{name}");
                assert_eq!(
                    std::path::Path::new(&path).exists(),
                    newer(6, 2),
                    "{version} {name}"
                );
                if newer(6, 2) {
                    let io = sock_io(&at(name)).unwrap();
                    assert_eq!((io.skaddr, io.protocol), (8, 18), "{version} {name}");
                }
            }
        }
    }
}
