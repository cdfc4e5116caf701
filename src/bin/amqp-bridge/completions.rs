//! `amqp-bridge completions SHELL`: a completion script, from the same
//! clap description as `--help`.

use crate::cli::{Cli, CompletionsArgs};
use clap::CommandFactory;

/// Writes the completion script for `args.shell` on standard output.
pub fn run(args: &CompletionsArgs) {
    let mut command = Cli::command();
    clap_complete::generate(
        args.shell,
        &mut command,
        "amqp-bridge",
        &mut std::io::stdout(),
    );
}
