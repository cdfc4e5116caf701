//! `amqp-bridge completions SHELL`: a completion script, from the same
//! clap description as `--help`.
//!
//! clap_complete 4.6's bash script names each subcommand's case after
//! the binary with its `-` turned into `__subcmd__`
//! (`amqp__subcmd__bridge__subcmd__serve)`), where the loop that walks
//! the command line builds `amqp__bridge__subcmd__serve`: nothing after
//! the subcommand completed. The script is mended here (the names made
//! to agree) until the generator is.

use crate::cli::{self, CompletionsArgs};
use clap_complete::Shell;

/// The binary's name.
const BIN: &str = "amqp-bridge";

/// Writes the completion script for `args.shell` on standard output.
pub fn run(args: &CompletionsArgs) {
    print!("{}", script(args.shell));
}

/// The completion script for `shell`.
pub fn script(shell: Shell) -> String {
    let mut command = cli::completion_command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, BIN, &mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    match shell {
        Shell::Bash => mend_bash(&text),
        _ => text,
    }
}

/// Makes the case labels of the bash script agree with the names its
/// loop builds.
fn mend_bash(script: &str) -> String {
    let wrong = BIN.replace('-', "__subcmd__");
    let right = BIN.replace('-', "__");
    script.replace(&wrong, &right)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_label_of_the_bash_script_is_a_name_its_loop_builds() {
        let script = script(Shell::Bash);
        assert!(!script.contains("amqp__subcmd__bridge"), "{script}");
        for subcommand in ["serve", "forward", "connect", "http", "socks", "run"] {
            let name = format!("amqp__bridge__subcmd__{subcommand}");
            assert!(script.contains(&format!("cmd=\"{name}\"")), "{name}");
            assert!(script.contains(&format!("{name})")), "{name}");
        }
        let keygen = script
            .split("amqp__bridge__subcmd__keygen)")
            .nth(1)
            .and_then(|rest| rest.split(";;").next())
            .unwrap();
        assert!(!keygen.contains("--url"), "{keygen}");
    }
}
