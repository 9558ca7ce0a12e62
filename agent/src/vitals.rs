//! The node's vitals for the operator (load, memory, uptime, disk use), in
//! the agent's retained status on `<prefix>/nodes/<node>/agent`: state that
//! is replaced, not a stream of events. Parsers of `/proc` are pure.

pub use homelab_core::agentstatus::{DiskUse, Vitals};

/// `/proc/loadavg`: `0.52 0.58 0.59 1/389 12345`.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// `/proc/meminfo`: (MemTotal, MemAvailable) in bytes.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kb| kb * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// `/proc/uptime`: `12345.67 23456.78`, whole seconds.
pub fn parse_uptime(text: &str) -> Option<u64> {
    text.split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
        .map(|s| s as u64)
}

/// Reads this machine's vitals; what cannot be read is left at zero.
pub fn read(disks: Vec<DiskUse>) -> Vitals {
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    let (memory_total_bytes, memory_available_bytes) =
        parse_meminfo(&read("/proc/meminfo")).unwrap_or_default();
    Vitals {
        load: parse_loadavg(&read("/proc/loadavg")).unwrap_or_default(),
        memory_total_bytes,
        memory_available_bytes,
        uptime_secs: parse_uptime(&read("/proc/uptime")).unwrap_or_default(),
        disks,
        containers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files() {
        assert_eq!(
            parse_loadavg("0.52 0.58 0.59 1/389 12345\n"),
            Some([0.52, 0.58, 0.59])
        );
        assert_eq!(parse_loadavg("0.52 x"), None);
        assert_eq!(parse_loadavg(""), None);
        let meminfo =
            "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   12288000 kB\n";
        assert_eq!(
            parse_meminfo(meminfo),
            Some((24_576_000 * 1024, 12_288_000 * 1024))
        );
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_uptime("12345.67 23456.78\n"), Some(12345));
        assert_eq!(parse_uptime("soon"), None);
        // This machine's, as a smoke check of the whole read.
        let here = read(vec![]);
        assert!(
            here.memory_total_bytes > 0 && here.uptime_secs > 0,
            "{here:?}"
        );
    }
}
