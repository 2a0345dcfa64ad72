//! `bench`: the side-by-side comparison of the protocols (not built yet).

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    eprintln!(
        "bench {}: not built yet. The comparison needs real `kvnode` clusters, which do not \
         exist yet; today the protocols can be exercised in the simulator with `make test`.",
        args.join(" ")
    );
    std::process::ExitCode::from(2)
}
