//! `ember`: boots a KVM microVM from Firecracker-style configuration.

mod cli;
mod config;
mod exit_code;
mod run;
mod terminal;

use clap::Parser;

fn fail(code: i32, msg: impl std::fmt::Display) -> ! {
    eprintln!("ember: error: {msg}");
    std::process::exit(code);
}

fn main() {
    let cli = cli::Cli::parse();
    let config = match config::from_cli(&cli) {
        Ok(Some(c)) => c,
        Ok(None) if cli.no_api => fail(
            exit_code::USAGE,
            "nothing to boot: give --config-file or --kernel, or drop --no-api to configure over the API",
        ),
        Ok(None) => fail(
            exit_code::SETUP_ERROR,
            "the API server is not available in this build yet: boot with --no-api and --config-file, or with --kernel",
        ),
        Err(e) => fail(exit_code::SETUP_ERROR, e),
    };
    if cli.api_sock.is_some() && !cli.no_api {
        fail(
            exit_code::SETUP_ERROR,
            "the API server is not available in this build yet: use --no-api",
        );
    }
    match run::boot_and_run(&config) {
        Ok(exit) => {
            let code = exit_code::for_exit(&exit);
            if code == exit_code::OK {
                eprintln!("ember: {exit}");
            } else {
                eprintln!("ember: error: {exit}");
            }
            std::process::exit(code);
        }
        Err(e) => fail(exit_code::SETUP_ERROR, e),
    }
}
