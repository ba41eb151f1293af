//! The `dprune` command-line tool: a thin layer that turns flags into
//! library parameters, runs them, and maps errors to exit codes.

mod cli;

use std::process::ExitCode;

/// glibc's malloc serves blocks above a moving threshold (128 KiB, raised up to
/// 32 MiB as such blocks are freed) with fresh `mmap`s and hands freed heap tops back
/// to the kernel beyond 128 KiB, so every embedding batch (2048 × 384 f32 = 3 MiB)
/// and parquet page buffer costs page faults on first touch: a third of the
/// read passes' system time. Fixing the threshold at its ceiling and keeping up
/// to 1 GiB of freed heap lets those buffers be reused (about 4% less CPU for
/// `filter` on 1M × 384). The cost is resident memory the process already had
/// at its peak, so peak RSS barely moves. Only the binary does this: a program
/// embedding the library keeps its own allocator policy.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    const MMAP_THRESHOLD: libc::c_int = 32 << 20;
    const TRIM_THRESHOLD: libc::c_int = 1 << 30;
    // SAFETY: mallopt only sets allocator parameters; it runs before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

fn main() -> ExitCode {
    tune_malloc();
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (`dprune ... | head`) is not a failure.
            if err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            // The chain, skipping causes whose text the message already holds (library
            // errors quote their source, e.g. "creating FILE: No such file or directory").
            let mut msg = err.to_string();
            for cause in err.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}
