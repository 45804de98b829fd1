use std::process::ExitCode;

fn main() -> ExitCode {
    vend::cli::main()
}
