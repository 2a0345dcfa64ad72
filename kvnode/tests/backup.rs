//! Backup and restore on real processes, for every protocol: `kvctl
//! snapshot save` (the client library's `backup`) takes a consistent
//! snapshot from the leader; `kvnode restore` writes each node of a new
//! cluster from it; the new cluster serves exactly what was acknowledged
//! before the backup, under its own cluster id.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{NODE_FLAGS, PROTOCOLS, TestCluster};
use kvnode::local_cluster::{LocalCluster, data_dirs_under};

const TEST_LIMIT: Duration = Duration::from_secs(120);

fn kvnode() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kvnode"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_restores_into_a_new_cluster_with_exactly_what_it_held() {
    for protocol in PROTOCOLS {
        let run = async {
            // The old cluster takes snapshots too, so the backup is read
            // from a state database that compacted its log.
            let test = TestCluster::start_with_flags(protocol, 3, &["--snapshot-entries", "100"]);
            test.leader().await;
            let mut client = test.client(Duration::from_secs(10));
            for i in 0..300 {
                client
                    .put(format!("k{i:03}"), format!("v{i}"))
                    .await
                    .expect("write");
            }
            for _ in 0..5 {
                client.increment("counter", 1).await.expect("increment");
            }
            let file = test.dir.path().join("backup.snap");
            let saved = client.backup(&file).await.expect("backup");
            eprintln!("{protocol}: {saved:?}");
            assert_eq!(saved.keys, 301, "{protocol}: every key");
            assert!(saved.sessions >= 1);
            client
                .put("after", "1")
                .await
                .expect("write after the backup");

            // A node per directory, each from the same file.
            let restored = tempfile::tempdir().expect("directory");
            let data_dirs = data_dirs_under(restored.path(), 3);
            for (i, data_dir) in data_dirs.iter().enumerate() {
                let output = std::process::Command::new(kvnode())
                    .arg("restore")
                    .arg(&file)
                    .args(["--data-dir", &data_dir.display().to_string()])
                    .args(["--id", &(i + 1).to_string()])
                    .args(["--protocol", protocol.name(), "--cluster-id", "restored"])
                    .output()
                    .expect("run kvnode restore");
                assert!(
                    output.status.success(),
                    "{protocol}: restore: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            // A second restore into a directory in use is refused, and
            // leaves it as it was.
            let again = std::process::Command::new(kvnode())
                .arg("restore")
                .arg(&file)
                .args(["--data-dir", &data_dirs[0].display().to_string()])
                .args(["--id", "1", "--protocol", protocol.name()])
                .args(["--cluster-id", "restored"])
                .output()
                .expect("run kvnode restore");
            assert!(!again.status.success());
            assert!(
                String::from_utf8_lossy(&again.stderr).contains("cannot restore into"),
                "{}",
                String::from_utf8_lossy(&again.stderr)
            );
            // A damaged file is refused before anything is written.
            let damaged = test.dir.path().join("damaged.snap");
            let mut bytes = std::fs::read(&file).expect("read the backup");
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            std::fs::write(&damaged, bytes).expect("write");
            let refused = std::process::Command::new(kvnode())
                .arg("restore")
                .arg(&damaged)
                .args([
                    "--data-dir",
                    &restored.path().join("x").display().to_string(),
                ])
                .args(["--id", "1", "--protocol", protocol.name()])
                .args(["--cluster-id", "restored"])
                .output()
                .expect("run kvnode restore");
            assert!(!refused.status.success());
            assert!(!restored.path().join("x").exists());

            let flags: Vec<&str> = NODE_FLAGS
                .iter()
                .copied()
                .chain(["--cluster-id", "restored"])
                .collect();
            let new =
                LocalCluster::start_in(kvnode(), &[], protocol, restored.path(), data_dirs, &flags)
                    .expect("start the restored cluster");
            new.wait_for_leader(Duration::from_secs(15))
                .await
                .expect("a leader in the restored cluster");
            let options = kvclient::ClientOptions {
                timeout: Duration::from_secs(10),
                ..kvclient::ClientOptions::default()
            };
            let mut restored_client =
                kvclient::Client::new(new.endpoints(), options).expect("endpoints");
            for i in (0..300).step_by(7) {
                assert_eq!(
                    restored_client.get(format!("k{i:03}")).await.expect("read"),
                    Some(format!("v{i}").into_bytes()),
                    "{protocol}: k{i:03}"
                );
            }
            assert_eq!(
                restored_client.get("counter").await.expect("read"),
                Some(b"5".to_vec())
            );
            assert_eq!(
                restored_client.get("after").await.expect("read"),
                None,
                "{protocol}: a write after the backup is not in it"
            );
            restored_client.put("new", "1").await.expect("write");
            let statuses = new.statuses().await;
            assert!(
                statuses.values().all(|s| s.cluster_id == "restored"),
                "{statuses:?}"
            );
            // The old cluster goes on, on its own.
            assert_eq!(client.get("new").await.expect("read"), None);
        };
        if tokio::time::timeout(TEST_LIMIT, run).await.is_err() {
            panic!("{protocol}: did not finish within {TEST_LIMIT:?}");
        }
    }
}
