//! Turning the kernel's monotonic timestamps into wall-clock time.

/// Converts `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) to UTC.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds.
    offset_ns: i128,
}

fn clock_ns(clock: rustix::time::ClockId) -> i128 {
    let ts = rustix::time::clock_gettime(clock);
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    u64::try_from(clock_ns(rustix::time::ClockId::Monotonic)).unwrap_or(0)
}

impl WallClock {
    pub fn now() -> Self {
        Self {
            offset_ns: clock_ns(rustix::time::ClockId::Realtime)
                - clock_ns(rustix::time::ClockId::Monotonic),
        }
    }

    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Nanoseconds since the Unix epoch.
    pub fn unix_ns(&self, monotonic_ns: u64) -> i128 {
        i128::from(monotonic_ns) + self.offset_ns
    }

    /// `2026-11-21T08:04:01.123456Z`.
    pub fn rfc3339(&self, monotonic_ns: u64) -> String {
        let (date, time, micros) = split(self.unix_ns(monotonic_ns));
        format!("{date}T{time}.{micros:06}Z")
    }

    /// `08:04:01.123`, for terminal columns.
    pub fn time_of_day(&self, monotonic_ns: u64) -> String {
        let (_, time, micros) = split(self.unix_ns(monotonic_ns));
        format!("{time}.{:03}", micros / 1000)
    }
}

fn split(unix_ns: i128) -> (String, String, i128) {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let micros = unix_ns.rem_euclid(1_000_000_000) / 1000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}:{:02}", sod / 3600, sod % 3600 / 60, sod % 60),
        micros,
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i128) -> (i128, i128, i128) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i128::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        let c = WallClock::with_offset(0);
        assert_eq!(c.rfc3339(0), "1970-01-01T00:00:00.000000Z");
        // 2026-11-21T08:04:01.123456789Z
        let ns = 1_795_248_241_123_456_789u64;
        assert_eq!(c.rfc3339(ns), "2026-11-21T08:04:01.123456Z");
        assert_eq!(c.time_of_day(ns), "08:04:01.123");
        // Leap day.
        assert_eq!(
            c.rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn offset_applies() {
        let c = WallClock::with_offset(86_400_000_000_000);
        assert_eq!(c.rfc3339(0), "1970-01-02T00:00:00.000000Z");
    }
}
