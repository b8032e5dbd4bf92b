//! `happen`: the command-line companion of the Happen framework.
//!
//! ```text
//! happen demo [--nats URL] [--role all|services|storefront] [--trace-json]
//!                  run the order-processing demo (embedded unless --nats is given)
//! happen version   print the version
//! happen help      print this help
//! ```

use std::process::ExitCode;

// The demo is the crate's `order_processing` example, compiled in here so that
// `happen demo` and `cargo run --example order_processing` are the same program.
#[allow(dead_code)]
#[path = "../../happen/examples/order_processing.rs"]
mod order_processing;

const HELP: &str = "\
happen: tools for Happen systems

USAGE:
    happen <COMMAND>

COMMANDS:
    demo       run the order-processing demo (embedded: no server needed)
               options: --nats URL             run over NATS
                        --role services        run the services half (with --nats)
                        --role storefront      run the storefront half (with --nats)
                        --trace-json           print each event's causal record as JSON
    version    print the version
    help       print this help
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => {
            let options = match order_processing::parse_args(args[1..].iter().cloned()) {
                Ok(options) => options,
                Err(message) => {
                    eprintln!("happen demo: {message}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("happen: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(order_processing::run(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("happen demo failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("version" | "--version" | "-V") => {
            println!("happen {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        None | Some("help" | "--help" | "-h") => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("happen: unknown command {other:?}\n\n{HELP}");
            ExitCode::from(2)
        }
    }
}
