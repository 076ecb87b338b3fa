//! The `ringkv` binary: a node (`ringkv start`) and the command-line client. All logic lives in the
//! library; this only hands the process to the CLI.

fn main() -> std::process::ExitCode {
    ringkv_server::cli::main()
}
