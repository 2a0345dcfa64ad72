//! `kvnode`: runs one replica, or (`kvnode cluster`) a local cluster.

/// mimalloc: a node allocates per request and per message; glibc's malloc
/// showed up at ~6% of a busy leader's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    kvnode::cli::main_with_args(std::env::args_os())
}
