//! kvctl's exit codes where no cluster answers (no cluster needed).

use std::process::Command;

fn kvctl(args: &[&str]) -> (i32, String, String) {
    // Port 1 on loopback: nothing listens there.
    let output = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["--endpoints", "127.0.0.1:1", "--timeout", "500ms"])
        .args(args)
        .output()
        .expect("run kvctl");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn status_exits_1_when_no_node_answers() {
    let (code, _, stderr) = kvctl(&["status"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no node answered"), "{stderr}");
    let (code, stdout, _) = kvctl(&["--json", "status"]);
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(json["ok"], false);
}

#[test]
fn a_member_change_with_a_bad_address_is_refused_before_any_call() {
    let (code, _, stderr) = kvctl(&["member", "add", "4", "127.0.0.1:7004"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("PEER_ADDR/CLIENT_ADDR"), "{stderr}");
}
