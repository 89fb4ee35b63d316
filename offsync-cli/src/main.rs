//! The `offsync` command: see the library's documentation (`offsync_cli`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = offsync_cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("offsync: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(offsync_cli::run(cli)) {
        Ok(printed) => {
            print!("{printed}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("offsync: {e}");
            ExitCode::FAILURE
        }
    }
}
