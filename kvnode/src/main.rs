//! `kvnode`: runs one replica, or (`kvnode cluster`) a local cluster.

fn main() -> std::process::ExitCode {
    kvnode::cli::main_with_args(std::env::args_os())
}
