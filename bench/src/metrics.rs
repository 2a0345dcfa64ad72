//! What the benchmark reads off the nodes: syncs (from Status) and CPU time
//! (from /proc), before and after each run.

use std::collections::BTreeMap;

use kvnode::local_cluster::LocalCluster;

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    let ticks = 100.0;
    Some((utime + stime) / ticks)
}

/// Resident memory of a process in MiB, from `/proc/PID/status` (VmRSS).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The size of the files under `dir`, in MiB (hard links counted once per
/// name: a capture shares its files with the state database).
pub fn dir_mib(dir: &std::path::Path) -> f64 {
    fn walk(dir: &std::path::Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut bytes = 0;
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                bytes += walk(&entry.path(), seen);
            } else if seen.insert((meta.dev(), meta.ino())) {
                bytes += meta.len();
            }
        }
        bytes
    }
    walk(dir, &mut std::collections::HashSet::new()) as f64 / (1024.0 * 1024.0)
}

/// Each node's resident memory and data directory size at one moment of a
/// run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MemorySample {
    /// Seconds since the run started.
    pub at_s: f64,
    /// Resident memory per node, MiB (in node order).
    pub rss_mib: Vec<f64>,
    /// Data directory per node, MiB (files counted once however many
    /// names they have).
    pub data_mib: Vec<f64>,
}

/// Samples every node's memory and data directory every `every` until
/// `stop` is set.
pub async fn sample_memory(
    pids: Vec<Option<u32>>,
    dirs: Vec<Option<std::path::PathBuf>>,
    every: std::time::Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<MemorySample> {
    let started = std::time::Instant::now();
    let mut samples = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let dirs = dirs.clone();
        let data_mib = tokio::task::spawn_blocking(move || {
            dirs.iter()
                .map(|d| d.as_deref().map_or(0.0, dir_mib))
                .collect::<Vec<f64>>()
        })
        .await
        .unwrap_or_default();
        samples.push(MemorySample {
            at_s: started.elapsed().as_secs_f64(),
            rss_mib: pids
                .iter()
                .map(|p| p.and_then(rss_mib).unwrap_or(0.0))
                .collect(),
            data_mib,
        });
        let next = started + every * samples.len() as u32;
        tokio::time::sleep_until(next.into()).await;
    }
    samples
}

/// Per-node counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Synced write batches per node.
    pub syncs: BTreeMap<u64, u64>,
    /// CPU seconds per node process.
    pub cpu: BTreeMap<u64, f64>,
    /// Read-cache hits and misses per node.
    pub cache: BTreeMap<u64, (u64, u64)>,
}

/// Reads every running node's counters.
pub async fn snapshot(cluster: &LocalCluster) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for (id, status) in cluster.statuses().await {
        snapshot.syncs.insert(id, status.synced_writes);
        snapshot
            .cache
            .insert(id, (status.cache_hits, status.cache_misses));
    }
    for &id in cluster.members().keys() {
        if let Some(cpu) = cluster.pid(id).and_then(cpu_seconds) {
            snapshot.cpu.insert(id, cpu);
        }
    }
    snapshot
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_resident_memory_and_a_directory_a_size() {
        assert!(super::rss_mib(std::process::id()).expect("readable /proc") > 0.0);
        let dir = std::env::temp_dir().join(format!("dir-mib-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).expect("dir");
        std::fs::write(dir.join("sub/a"), vec![0u8; 1 << 20]).expect("write");
        std::fs::hard_link(dir.join("sub/a"), dir.join("b")).expect("link");
        let mib = super::dir_mib(&dir);
        assert!((mib - 1.0).abs() < 0.01, "{mib}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let used = super::cpu_seconds(std::process::id()).expect("readable /proc");
        assert!(used >= 0.0);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(super::cpu_seconds(std::process::id()).expect("readable") >= used);
    }
}
