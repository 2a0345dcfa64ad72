//! The Redis-protocol endpoint (`--resp-addr`), through redis-cli (Debian's
//! redis-tools, installed when missing; without it the tests say loudly
//! that they skip).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Protocol, TestCluster, run_each_protocol};

const FLAGS: &[&str] = &["--resp-addr", "127.0.0.1:0"];

fn redis_cli() -> Option<PathBuf> {
    match kvnode::local_cluster::debian_tool("redis-cli", "redis-tools") {
        Ok(path) => Some(path),
        Err(why) => {
            eprintln!("SKIPPED: the Redis-protocol tests need redis-cli: {why}");
            None
        }
    }
}

/// Runs `redis-cli -h HOST -p PORT --no-raw ARGS...` and returns its output
/// (redis-cli's formatted replies: `"v"`, `(integer) 3`, `(nil)`,
/// `(error) ERR ...`).
async fn cli(redis_cli: &Path, addr: &str, args: &[&str]) -> String {
    let (host, port) = addr.rsplit_once(':').expect("HOST:PORT");
    let output = tokio::process::Command::new(redis_cli)
        .args(["-h", host, "-p", port, "--no-raw"])
        .args(args)
        .output()
        .await
        .expect("run redis-cli");
    assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_string()
}

/// Each node's Redis-protocol address.
fn resp_addrs(test: &TestCluster) -> Vec<(u64, String)> {
    test.cluster
        .members()
        .keys()
        .map(|&id| (id, test.logged_addr(id, "serving the Redis protocol")))
        .collect()
}

/// Every command, sent by redis-cli to a follower (which forwards to the
/// leader) and read back through another node, on every protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cli_runs_every_command_through_any_node() {
    let Some(redis_cli) = redis_cli() else {
        return;
    };
    run_each_protocol(Duration::from_secs(60), move |protocol| {
        let redis_cli = redis_cli.clone();
        async move { every_command(protocol, &redis_cli).await }
    })
    .await;
}

async fn every_command(protocol: Protocol, redis_cli: &Path) {
    let test = TestCluster::start_with_flags(protocol, 3, FLAGS);
    let (leader, _) = test.leader().await;
    let addrs = resp_addrs(&test);
    let follower = &addrs
        .iter()
        .find(|(id, _)| *id != leader)
        .expect("a follower")
        .1;
    let other = &addrs
        .iter()
        .rfind(|(id, _)| *id != leader)
        .expect("a follower")
        .1;
    let leader_addr = &addrs
        .iter()
        .find(|(id, _)| *id == leader)
        .expect("the leader")
        .1;
    let run = |args: &'static [&'static str]| cli(redis_cli, follower, args);

    assert_eq!(run(&["PING"]).await, "PONG");
    assert_eq!(run(&["SET", "greeting", "hello world"]).await, "OK");
    assert_eq!(run(&["GET", "greeting"]).await, "\"hello world\"");
    // Linearizable through any node: what one wrote, the others read.
    assert_eq!(
        cli(redis_cli, other, &["GET", "greeting"]).await,
        "\"hello world\""
    );
    assert_eq!(
        cli(redis_cli, leader_addr, &["GET", "greeting"]).await,
        "\"hello world\""
    );
    assert_eq!(run(&["GET", "absent"]).await, "(nil)");
    assert_eq!(run(&["MSET", "a", "1", "b", "2"]).await, "OK");
    assert_eq!(
        run(&["MGET", "a", "b", "absent"]).await,
        "1) \"1\"\n2) \"2\"\n3) (nil)"
    );
    assert_eq!(run(&["EXISTS", "a", "b", "absent"]).await, "(integer) 2");
    assert_eq!(run(&["INCR", "counter"]).await, "(integer) 1");
    assert_eq!(run(&["INCRBY", "counter", "41"]).await, "(integer) 42");
    assert_eq!(run(&["DECRBY", "counter", "2"]).await, "(integer) 40");
    assert_eq!(run(&["DECR", "counter"]).await, "(integer) 39");
    assert_eq!(
        run(&["INCR", "greeting"]).await,
        "(error) ERR value is not an integer or out of range"
    );
    assert_eq!(
        run(&["INCRBY", "counter", "x"]).await,
        "(error) ERR value is not an integer or out of range"
    );
    assert_eq!(run(&["SET", "lock", "me", "NX"]).await, "OK");
    assert_eq!(run(&["SET", "lock", "you", "NX"]).await, "(nil)");
    assert_eq!(run(&["SETNX", "lock", "you"]).await, "(integer) 0");
    assert_eq!(run(&["GET", "lock"]).await, "\"me\"");
    assert_eq!(run(&["DEL", "a", "b"]).await, "(integer) 2");
    assert_eq!(run(&["MGET", "a", "b"]).await, "1) (nil)\n2) (nil)");
    let refused = run(&["SET", "k", "v", "EX", "10"]).await;
    assert!(
        refused.starts_with("(error) ERR SET option 'EX'"),
        "{refused}"
    );
    let unknown = run(&["HSET", "h", "f", "v"]).await;
    assert!(
        unknown.starts_with("(error) ERR unknown command 'hset'"),
        "{unknown}"
    );
    let arity = run(&["GET"]).await;
    assert_eq!(
        arity,
        "(error) ERR wrong number of arguments for 'get' command"
    );
    // Binary-safe values, from stdin (-x: the last argument).
    let value: Vec<u8> = (0..=255u8).collect();
    let (host, port) = follower.rsplit_once(':').expect("HOST:PORT");
    let mut child = std::process::Command::new(redis_cli)
        .args(["-h", host, "-p", port, "-x", "SET", "binary"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-cli");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &value).expect("write");
    assert!(child.wait().expect("redis-cli").success());
    let mut client = test.client(Duration::from_secs(5));
    assert_eq!(
        client.get("binary").await.expect("get"),
        Some(value),
        "what redis-cli set, the gRPC API reads"
    );

    // INFO: this node's view.
    let info = run(&["INFO"]).await;
    assert!(info.contains("role:follower"), "{info}");
    assert!(info.contains(&format!("leader:{leader}")), "{info}");
    assert!(info.contains(&format!("protocol:{protocol}")), "{info}");
    assert!(info.contains("voters:1,2,3"), "{info}");
}

/// Increments through all three nodes at once, as concurrent redis-cli
/// processes: every one is applied exactly once, and the values the
/// callers see are exactly 1..=n (a linearizable counter).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn increments_through_every_node_are_applied_exactly_once() {
    let Some(redis_cli) = redis_cli() else {
        return;
    };
    run_each_protocol(Duration::from_secs(60), move |protocol| {
        let redis_cli = redis_cli.clone();
        async move {
            let test = TestCluster::start_with_flags(protocol, 3, FLAGS);
            test.leader().await;
            const EACH: usize = 40;
            let runs: Vec<_> = resp_addrs(&test)
                .into_iter()
                .map(|(_, addr)| {
                    let redis_cli = redis_cli.clone();
                    tokio::spawn(async move {
                        let repeat = EACH.to_string();
                        cli(&redis_cli, &addr, &["-r", &repeat, "INCR", "n"]).await
                    })
                })
                .collect();
            let mut seen = Vec::new();
            for run in runs {
                let output = run.await.expect("redis-cli");
                for line in output.lines() {
                    let value = line
                        .strip_prefix("(integer) ")
                        .and_then(|n| n.trim().parse::<i64>().ok());
                    seen.push(
                        value.unwrap_or_else(|| panic!("{protocol}: INCR answered {line:?}")),
                    );
                }
            }
            seen.sort_unstable();
            let expected: Vec<i64> = (1..=(3 * EACH) as i64).collect();
            assert_eq!(
                seen, expected,
                "{protocol}: each increment once, each value once"
            );
            let mut client = test.client(Duration::from_secs(5));
            assert_eq!(
                client.get("n").await.expect("get"),
                Some((3 * EACH).to_string().into_bytes())
            );
        }
    })
    .await;
}
