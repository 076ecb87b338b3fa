//! The `ringkv` command line: `start` runs a node; every other command is a client of a running
//! cluster (`--endpoints`). Exit codes: 0 success; 1 the answer is "no" (key not found,
//! compare-and-swap expectation not met, replicas that differ); 2 an error, reported on one line
//! of stderr.

/// `println!` that stops quietly when stdout is closed (`ringkv status | head`) instead of
/// panicking on a broken pipe.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod args;
mod cert;
mod report;
mod run;
mod start;

pub use run::main;
