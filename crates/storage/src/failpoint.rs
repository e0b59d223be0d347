//! Failpoints: named places where a test build crashes the process, fails an I/O call, or
//! deliberately breaks a safety rule so the fault-injection harness can prove it notices.
//!
//! Compiled in only with the `failpoints` feature; without it every check is a constant the
//! optimiser removes, so release binaries carry none of this.
//!
//! Configured once, from `BALLAST_FAILPOINTS`: `name=action[@n]` items separated by `;`.
//! Actions: `abort` (the process dies on the spot, as under kill -9), `eio` and `enospc` (the
//! I/O call at that point fails with that error), `on` (a switch, for the `break-*` names).
//! `@n` makes the action fire from the n-th pass through the point on (default: the first).
//!
//! Points: `wal-write`, `wal-fsync`, `backend-commit` (I/O); `raft-before-save`, `raft-after-save`,
//! `raft-before-snapshot`, `raft-after-snapshot`, `apply-before`, `apply-after` (crash);
//! `break-skip-wal-sync` (acknowledge before the WAL reaches the OS), `break-local-reads`
//! (linearizable reads served without ReadIndex), `break-corrupt-writes` (stored values get a
//! flipped bit, as from a bad disk).

/// The environment variable the configuration is read from.
pub const ENV: &str = "BALLAST_FAILPOINTS";

/// Dies here when the point's action is `abort`.
#[inline(always)]
pub fn crash(name: &str) {
    #[cfg(feature = "failpoints")]
    if imp::fire(name) == Some(imp::Action::Abort) {
        tracing::error!(failpoint = name, "failpoint: aborting");
        std::process::abort();
    }
    let _ = name;
}

/// Fails here when the point's action is an I/O error.
#[inline(always)]
pub fn io(name: &str) -> std::io::Result<()> {
    #[cfg(feature = "failpoints")]
    match imp::fire(name) {
        Some(imp::Action::Eio) => return Err(std::io::Error::from_raw_os_error(5)),
        Some(imp::Action::Enospc) => return Err(std::io::Error::from_raw_os_error(28)),
        Some(imp::Action::Abort) => std::process::abort(),
        _ => {}
    }
    let _ = name;
    Ok(())
}

/// Whether a switch (a `break-*` name) is on.
#[inline(always)]
pub fn enabled(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    if imp::fire(name) == Some(imp::Action::On) {
        return true;
    }
    let _ = name;
    false
}

#[cfg(feature = "failpoints")]
mod imp {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Action {
        Abort,
        Eio,
        Enospc,
        On,
    }

    struct Point {
        action: Action,
        from: u64,
        passes: AtomicU64,
    }

    fn points() -> &'static HashMap<String, Point> {
        static POINTS: OnceLock<HashMap<String, Point>> = OnceLock::new();
        POINTS.get_or_init(|| {
            let spec = std::env::var(super::ENV).unwrap_or_default();
            let parsed = parse(&spec);
            if !parsed.is_empty() {
                tracing::warn!(failpoints = %spec, "failpoints armed");
            }
            parsed
        })
    }

    fn parse(spec: &str) -> HashMap<String, Point> {
        let mut out = HashMap::new();
        for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((name, rest)) = item.split_once('=') else {
                continue;
            };
            let (action, from) = match rest.split_once('@') {
                Some((a, n)) => (a, n.parse().unwrap_or(1)),
                None => (rest, 1),
            };
            let action = match action {
                "abort" => Action::Abort,
                "eio" => Action::Eio,
                "enospc" => Action::Enospc,
                "on" => Action::On,
                _ => continue,
            };
            out.insert(
                name.to_string(),
                Point {
                    action,
                    from,
                    passes: AtomicU64::new(0),
                },
            );
        }
        out
    }

    pub fn fire(name: &str) -> Option<Action> {
        let p = points().get(name)?;
        let n = p.passes.fetch_add(1, Ordering::Relaxed) + 1;
        (n >= p.from).then_some(p.action)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_actions_and_thresholds() {
            let p = parse("a=abort@3; b=eio ;c=on;bad;d=what");
            assert_eq!(p.len(), 3);
            assert_eq!(p["a"].action, Action::Abort);
            assert_eq!(p["a"].from, 3);
            assert_eq!(p["b"].action, Action::Eio);
            assert_eq!(p["b"].from, 1);
            assert_eq!(p["c"].action, Action::On);
        }
    }
}
