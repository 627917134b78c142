//! Just enough of a BTF reader to find member offsets of kernel structures
//! (Documentation/bpf/btf.rst), so the programs can follow
//! `sock -> net -> ns.inum` on any kernel with `/sys/kernel/btf/vmlinux`.
use std::collections::HashMap;

use tcpwatch_common::{
    KernelOffsets, OFFSETS_FILES, OFFSETS_SKB, OFFSETS_SOCK, OFFSETS_SOCK_COMMON,
    OFFSETS_SOCK_ENDPOINTS, OFFSETS_SOCK_STATE, OFFSETS_TASK_FLAGS, OFFSETS_TS_RECENT,
    SOCK_HEAD_BYTES,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("BTF data is truncated or malformed")]
    Malformed,
    #[error("BTF data has bad magic (not BTF, or another byte order)")]
    BadMagic,
    #[error("BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("struct `{strukt}` has no member `{member}` in BTF")]
    NoMember { strukt: String, member: String },
    #[error("member `{0}` is not a struct or union, cannot descend into it")]
    NotAggregate(String),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// In bits.
    offset: u32,
}

#[derive(Clone, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    /// Referenced type for typedefs and qualifiers.
    type_ref: u32,
    members: Vec<Member>,
}

/// Parsed BTF: types and strings.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    let bytes = data.get(at..at + 4).ok_or(BtfError::Malformed)?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

impl Btf {
    /// Parses little-endian BTF (the only byte order tcpwatch runs on).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = data.get(0..2).ok_or(BtfError::Malformed)?;
        if magic != [0x9f, 0xeb] {
            return Err(BtfError::BadMagic);
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let span = |off: usize, len: usize| -> Result<&[u8], BtfError> {
            let start = hdr_len.checked_add(off).ok_or(BtfError::Malformed)?;
            let end = start.checked_add(len).ok_or(BtfError::Malformed)?;
            data.get(start..end).ok_or(BtfError::Malformed)
        };
        let type_data = span(type_off, type_len)?;
        let strings = span(str_off, str_len)?.to_vec();

        // Type id 0 is `void`.
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            type_ref: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < type_data.len() {
            let name_off = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let raw_offset = u32_at(type_data, m + 8)?;
                        members.push(Member {
                            name_off: u32_at(type_data, m)?,
                            type_id: u32_at(type_data, m + 4)?,
                            offset: if kind_flag {
                                raw_offset & 0x00ff_ffff
                            } else {
                                raw_offset
                            },
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                0 | 2 | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16
                | KIND_TYPE_TAG => 0,
                _ => return Err(BtfError::Malformed),
            };
            at += extra;
            if at > type_data.len() {
                return Err(BtfError::Malformed);
            }
            types.push(Type {
                name_off,
                kind,
                type_ref: size_or_type,
                members,
            });
        }

        let mut btf = Btf {
            types,
            strings,
            structs_by_name: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            if ty.kind == KIND_STRUCT && ty.name_off != 0 {
                let name = btf.string(ty.name_off).to_owned();
                // Keep the first definition, like libbpf does for duplicates.
                btf.structs_by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let tail = self.strings.get(off as usize..).unwrap_or_default();
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> Result<&Type, BtfError> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize).ok_or(BtfError::Malformed)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.type_ref
                }
                _ => return Ok(ty),
            }
        }
        Err(BtfError::Malformed)
    }

    /// Bit offset of member `name` in `ty`, looking through anonymous
    /// structs and unions; returns the member's type id too.
    fn find_member(&self, ty: &Type, name: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        for m in &ty.members {
            if m.name_off != 0 && self.string(m.name_off) == name {
                return Some((m.offset, m.type_id));
            }
        }
        for m in ty.members.iter().filter(|m| m.name_off == 0) {
            if let Ok(inner) = self.resolve(m.type_id) {
                if let Some((off, id)) = self.find_member(inner, name, depth + 1) {
                    return Some((m.offset + off, id));
                }
            }
        }
        None
    }

    /// Byte offset of a member path such as `["__sk_common", "skc_net", "net"]`
    /// from the start of `struct strukt`.
    pub fn member_offset(&self, strukt: &str, path: &[&str]) -> Result<u32, BtfError> {
        Ok(self.member_bit_offset(strukt, path)? / 8)
    }

    /// Bit offset of a member path from the start of `struct strukt`: a
    /// bitfield's own bit (`tcp_options_received.saw_tstamp`).
    pub fn member_bit_offset(&self, strukt: &str, path: &[&str]) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let mut ty = self.resolve(id)?;
        let mut bits = 0;
        for (i, name) in path.iter().enumerate() {
            if ty.kind != KIND_STRUCT && ty.kind != KIND_UNION {
                return Err(BtfError::NotAggregate(path[i - 1].to_owned()));
            }
            let (off, member_type) =
                self.find_member(ty, name, 0)
                    .ok_or_else(|| BtfError::NoMember {
                        strukt: strukt.to_owned(),
                        member: path[..=i].join("."),
                    })?;
            bits += off;
            ty = self.resolve(member_type)?;
        }
        Ok(bits)
    }
}

/// The offsets the programs need: the network namespace of a socket
/// (required), of a segment's device (for resets sent for no socket) and
/// the path from a task's file descriptor to its socket (for accept()).
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let mut offsets = KernelOffsets {
        sock_net: btf.member_offset("sock", &["__sk_common", "skc_net", "net"])?,
        net_inum: btf.member_offset("net", &["ns", "inum"])?,
        sock_family: btf.member_offset("sock", &["__sk_common", "skc_family"])?,
        valid: OFFSETS_SOCK,
        ..KernelOffsets::unknown()
    };
    if let (Ok(skb_dev), Ok(netdev_net)) = (
        btf.member_offset("sk_buff", &["dev"]),
        btf.member_offset("net_device", &["nd_net", "net"]),
    ) {
        offsets.skb_dev = skb_dev;
        offsets.netdev_net = netdev_net;
        offsets.valid |= OFFSETS_SKB;
    }
    let files = (|| -> Result<[u32; 6], BtfError> {
        Ok([
            btf.member_offset("task_struct", &["files"])?,
            btf.member_offset("files_struct", &["fdt"])?,
            btf.member_offset("fdtable", &["fd"])?,
            btf.member_offset("fdtable", &["max_fds"])?,
            btf.member_offset("file", &["private_data"])?,
            btf.member_offset("socket", &["sk"])?,
        ])
    })();
    if let Ok([task_files, files_fdt, fdtable_fd, fdtable_max_fds, file_private_data, socket_sk]) =
        files
    {
        offsets.task_files = task_files;
        offsets.files_fdt = files_fdt;
        offsets.fdtable_fd = fdtable_fd;
        offsets.fdtable_max_fds = fdtable_max_fds;
        offsets.file_private_data = file_private_data;
        offsets.socket_sk = socket_sk;
        offsets.valid |= OFFSETS_FILES;
    }
    if let Ok(task_flags) = btf.member_offset("task_struct", &["flags"]) {
        offsets.task_flags = task_flags;
        offsets.valid |= OFFSETS_TASK_FLAGS;
    }
    if let (Ok(owned), Ok(packets_out)) = (
        btf.member_offset("sock", &["sk_lock", "owned"]),
        btf.member_offset("tcp_sock", &["packets_out"]),
    ) {
        offsets.sock_lock_owned = owned;
        offsets.tcp_packets_out = packets_out;
        offsets.valid |= OFFSETS_SOCK_STATE;
    }
    let rx_opt_bit = |field: &str| btf.member_bit_offset("tcp_sock", &["rx_opt", field]);
    if let (Ok(stamp), Ok(saw), Ok(ok)) = (
        btf.member_offset("tcp_sock", &["rx_opt", "ts_recent_stamp"]),
        rx_opt_bit("saw_tstamp"),
        rx_opt_bit("tstamp_ok"),
    ) {
        offsets.tcp_ts_recent_stamp = stamp;
        offsets.tcp_saw_tstamp_bit = saw;
        offsets.tcp_tstamp_ok_bit = ok;
        offsets.valid |= OFFSETS_TS_RECENT;
    }
    let common = |field: &'static str| btf.member_offset("sock", &["__sk_common", field]);
    let endpoints = (|| -> Result<[u32; 7], BtfError> {
        Ok([
            btf.member_offset("sock", &["sk_protocol"])?,
            btf.member_offset("inet_sock", &["inet_sport"])?,
            common("skc_dport")?,
            btf.member_offset("inet_sock", &["inet_saddr"])?,
            common("skc_daddr")?,
            common("skc_v6_rcv_saddr")?,
            common("skc_v6_daddr")?,
        ])
    })();
    // The programs read the ports, family and IPv4 addresses in one block
    // from `skc_daddr` on: each must lie within it.
    let in_head = |at: u32, size: u32, daddr: u32| {
        at >= daddr && (at - daddr + size) as usize <= SOCK_HEAD_BYTES
    };
    let endpoints = endpoints
        .ok()
        .filter(|[_, sport, dport, saddr, daddr, ..]| {
            in_head(*sport, 2, *saddr)
                && in_head(*dport, 2, *daddr)
                && in_head(offsets.sock_family, 2, *daddr)
        });
    let common_local = (|| -> Result<[u32; 3], BtfError> {
        Ok([
            common("skc_rcv_saddr")?,
            common("skc_num")?,
            common("skc_state")?,
        ])
    })();
    if let Some([protocol, sport, dport, saddr, daddr, v6_rcv_saddr, v6_daddr]) = endpoints {
        if let Ok([rcv_saddr, num, state]) = common_local {
            if in_head(rcv_saddr, 4, daddr) && in_head(num, 2, daddr) && in_head(state, 1, daddr) {
                offsets.sock_rcv_saddr = rcv_saddr;
                offsets.sock_num = num;
                offsets.sock_state = state;
                offsets.valid |= OFFSETS_SOCK_COMMON;
            }
        }
        offsets.sock_protocol = protocol;
        offsets.inet_sport = sport;
        offsets.sock_dport = dport;
        offsets.inet_saddr = saddr;
        offsets.sock_daddr = daddr;
        offsets.sock_v6_rcv_saddr = v6_rcv_saddr;
        offsets.sock_v6_daddr = v6_daddr;
        offsets.valid |= OFFSETS_SOCK_ENDPOINTS;
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a small BTF blob: `struct inner { int a; int b; }` behind a
    /// typedef, and `struct outer { int x; union { int y; inner_t in; }; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0a\0b\0inner\0inner_t\0outer\0x\0y\0in\0".to_vec();
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            words
                .iter()
                .for_each(|w| t.extend_from_slice(&w.to_le_bytes()))
        };
        // 1: int
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner { a @0, b @32 }
        push(&[
            s("inner"),
            KIND_STRUCT << 24 | 2,
            8,
            s("a"),
            1,
            0,
            s("b"),
            1,
            32,
        ]);
        // 3: typedef inner_t -> 2
        push(&[s("inner_t"), KIND_TYPEDEF << 24, 2]);
        // 4: anonymous union { y @0, in @0 }
        push(&[0, KIND_UNION << 24 | 2, 8, s("y"), 1, 0, s("in"), 3, 0]);
        // 5: struct outer { x @0, <anon> @64 }
        push(&[
            s("outer"),
            KIND_STRUCT << 24 | 2,
            16,
            s("x"),
            1,
            0,
            0,
            4,
            64,
        ]);
        let mut blob = Vec::new();
        for w in [
            0xeb9f_u32 | 1 << 16,
            24,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&w.to_le_bytes());
        }
        // The first word packs magic (u16), version (u8) and flags (u8).
        blob[0..4].copy_from_slice(&[0x9f, 0xeb, 1, 0]);
        blob.extend_from_slice(&t);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_typedefs() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", &["x"]), Ok(0));
        assert_eq!(btf.member_offset("outer", &["y"]), Ok(8));
        assert_eq!(btf.member_offset("outer", &["in", "b"]), Ok(12));
        assert_eq!(
            btf.member_offset("outer", &["in", "c"]),
            Err(BtfError::NoMember {
                strukt: "outer".into(),
                member: "in.c".into()
            })
        );
        assert_eq!(
            btf.member_offset("nope", &["x"]),
            Err(BtfError::NoStruct("nope".into()))
        );
        assert_eq!(
            btf.member_offset("outer", &["x", "y"]),
            Err(BtfError::NotAggregate("x".into()))
        );
    }

    #[test]
    fn truncated_or_foreign_data_is_an_error() {
        let blob = sample();
        for cut in [0, 1, 10, 30, blob.len() - 1] {
            assert!(Btf::parse(&blob[..cut]).is_err(), "cut at {cut}");
        }
        let mut swapped = blob.clone();
        swapped[0..2].copy_from_slice(&[0xeb, 0x9f]);
        assert_eq!(Btf::parse(&swapped).err(), Some(BtfError::BadMagic));
    }

    #[test]
    fn running_kernel_has_the_netns_path() {
        // Ground truth where the machine has BTF; skipped elsewhere.
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            return;
        };
        let btf = Btf::parse(&data).unwrap();
        let offsets = kernel_offsets(&btf).unwrap();
        assert_eq!(
            offsets.valid,
            OFFSETS_SOCK
                | OFFSETS_SKB
                | OFFSETS_FILES
                | OFFSETS_TASK_FLAGS
                | OFFSETS_SOCK_ENDPOINTS
                | OFFSETS_SOCK_STATE
                | OFFSETS_SOCK_COMMON
                | OFFSETS_TS_RECENT
        );
        // skc_rcv_saddr follows skc_daddr; skc_num follows skc_dport, then
        // the family and the state (include/net/sock.h).
        assert_eq!(
            (offsets.sock_rcv_saddr, offsets.sock_num, offsets.sock_state),
            (4, 14, 18),
            "{offsets:?}"
        );
        assert!(
            offsets.tcp_ts_recent_stamp > offsets.tcp_packets_out / 2,
            "{offsets:?}"
        );
        // struct sock_common opens with the addresses, then the hash, the
        // ports and the family (include/net/sock.h).
        assert_eq!(
            (offsets.sock_daddr, offsets.sock_dport),
            (0, 12),
            "{offsets:?}"
        );
        // struct inet_sock follows its struct sock with inet_saddr and,
        // a few bytes on, inet_sport (include/net/inet_sock.h).
        assert!(
            offsets.inet_saddr > 500 && offsets.inet_sport > offsets.inet_saddr,
            "{offsets:?}"
        );
        assert_eq!(offsets.sock_family, 16, "{offsets:?}");
        // `flags` follows `__state`, `stack` and `usage` (include/linux/sched.h).
        assert!(
            offsets.task_flags > 0 && offsets.task_flags < 256,
            "{offsets:?}"
        );
        assert!(
            offsets.task_files > 0 && offsets.socket_sk > 0,
            "{offsets:?}"
        );
        assert!(offsets.skb_dev > 0 && offsets.netdev_net > 0, "{offsets:?}");
        assert!(
            offsets.sock_net > 0 && offsets.sock_net < 256,
            "{offsets:?}"
        );
    }
}
