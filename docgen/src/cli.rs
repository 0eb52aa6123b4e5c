//! The command-line reference: one renderer for any clap [`Command`] tree, used for both
//! `taxi-worker` and `taxi-operator`.
//!
//! Every visible command, recursively, gets a section with its about text, its usage line and a
//! table of its arguments (long and short name, value name, default, environment variable,
//! possible values, help). Hidden commands and arguments stay out, as they do in `--help`; so do
//! clap's own `-h`/`--help`, `-V`/`--version` and `help` subcommand, which the page mentions once.

use std::fmt::Write as _;

use clap::{Arg, ArgAction, Command, CommandFactory};

use crate::markdown::{anchor, cell, code, generated_notice, prose, row, table_header};

/// The page `docs/reference/cli.md`: `taxi-worker` and `taxi-operator`.
pub fn page() -> String {
    render(
        "Command-line reference",
        "worker/src/cli and operator/src/cli.rs",
        vec![taxi_worker::cli::Cli::command(), taxi_operator::cli::Cli::command()],
    )
}

/// A page titled `title` documenting the `binaries`' commands, generated from `source`.
pub fn render(title: &str, source: &str, binaries: Vec<Command>) -> String {
    let binaries: Vec<Command> = binaries
        .into_iter()
        .map(|mut binary| {
            // Sets each subcommand's full name and propagates global arguments, as parsing does.
            binary.build();
            binary
        })
        .collect();
    let mut page = generated_notice(source);
    let _ = writeln!(page, "\n# {title}\n");
    for binary in &binaries {
        contents(&mut page, binary, 0);
    }
    page.push_str(
        "\nEvery command also takes `--help`, which prints the texts below (`-h` prints them shorter), \
         and each binary takes `-V`/`--version`. A flag given on the command line wins over its \
         environment variable, which wins over the default.\n",
    );
    for binary in &binaries {
        section(&mut page, binary, None, 2);
    }
    page
}

/// The visible subcommands, without clap's own `help`.
fn subcommands(command: &Command) -> impl Iterator<Item = &Command> {
    command.get_subcommands().filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
}

fn full_name(command: &Command) -> String {
    command.get_bin_name().unwrap_or(command.get_name()).to_owned()
}

fn contents(page: &mut String, command: &Command, depth: usize) {
    let name = full_name(command);
    let _ = writeln!(page, "{}- [{}](#{})", "  ".repeat(depth), code(&name), anchor(&name));
    for sub in subcommands(command) {
        contents(page, sub, depth + 1);
    }
}

fn section(page: &mut String, command: &Command, parent: Option<&Command>, level: usize) {
    let name = full_name(command);
    let _ = writeln!(page, "\n{} {}\n", "#".repeat(level), code(&name));
    if let Some(about) = command.get_long_about().or(command.get_about()) {
        let _ = writeln!(page, "{}\n", prose(&about.to_string(), "\n\n"));
    }
    let usage = command.clone().render_usage().to_string();
    let _ = writeln!(page, "```text\n{}\n```", usage.trim_end());

    let subs: Vec<&Command> = subcommands(command).collect();
    if !subs.is_empty() {
        let _ = write!(page, "\n{}", table_header(&["Command", "What it does"]));
        for sub in &subs {
            let sub_name = full_name(sub);
            let about = sub.get_about().map(|a| first_paragraph(&a.to_string())).unwrap_or_default();
            page.push_str(&row(&[format!("[{}](#{})", code(sub.get_name()), anchor(&sub_name)), cell(&about)]));
        }
    }

    let inherited = |arg: &Arg| {
        arg.is_global_set() && parent.is_some_and(|p| p.get_arguments().any(|a| a.get_id() == arg.get_id()))
    };
    let args: Vec<&Arg> = command.get_arguments().filter(|a| documented(a) && !inherited(a)).collect();
    let positionals: Vec<&Arg> = args.iter().copied().filter(|a| a.is_positional()).collect();
    let options: Vec<&Arg> = args.iter().copied().filter(|a| !a.is_positional()).collect();
    if !positionals.is_empty() {
        let _ = write!(page, "\n{}", table_header(&["Argument", "Default", "Environment", "Description"]));
        for arg in positionals {
            page.push_str(&row(&[value_name(arg), default(arg), env(arg), description(arg)]));
        }
    }
    if !options.is_empty() {
        let _ = write!(page, "\n{}", table_header(&["Option", "Value", "Default", "Environment", "Description"]));
        for arg in options {
            page.push_str(&row(&[flag(arg), value(arg), default(arg), env(arg), description(arg)]));
        }
    }
    if let Some(parent) = parent.filter(|p| p.get_arguments().any(|a| a.is_global_set() && documented(a))) {
        let parent_name = full_name(parent);
        let _ = writeln!(page, "\nThe options of [{}](#{}) apply too.", code(&parent_name), anchor(&parent_name));
    }

    for sub in subs {
        section(page, sub, Some(command), level + 1);
    }
}

/// Whether the page lists `arg`: not hidden, and not one of clap's own help and version flags.
fn documented(arg: &Arg) -> bool {
    !arg.is_hide_set()
        && !matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
}

fn takes_value(arg: &Arg) -> bool {
    arg.get_num_args().is_some_and(|n| n.takes_values())
}

fn flag(arg: &Arg) -> String {
    let mut names = Vec::new();
    if let Some(short) = arg.get_short() {
        names.push(code(&format!("-{short}")));
    }
    if let Some(long) = arg.get_long() {
        names.push(code(&format!("--{long}")));
    }
    for alias in arg.get_visible_aliases().unwrap_or_default() {
        names.push(code(&format!("--{alias}")));
    }
    let mut text = names.join(", ");
    if arg.is_required_set() {
        text.push_str(" (required)");
    }
    text
}

fn value_name(arg: &Arg) -> String {
    let names: Vec<String> = match arg.get_value_names() {
        Some(names) => names.iter().map(|n| format!("<{n}>")).collect(),
        None => vec![format!("<{}>", arg.get_id().as_str().to_uppercase())],
    };
    let mut text = code(&names.join(" "));
    if arg.is_required_set() && arg.is_positional() {
        text.push_str(" (required)");
    }
    text
}

fn value(arg: &Arg) -> String {
    if !takes_value(arg) {
        return match arg.get_action() {
            ArgAction::Count => "none; repeatable".to_owned(),
            _ => "none".to_owned(),
        };
    }
    let mut text = value_name(arg);
    if let Some(delimiter) = arg.get_value_delimiter() {
        let _ = write!(text, ", {}-separated", code(&delimiter.to_string()));
    }
    if matches!(arg.get_action(), ArgAction::Append) {
        text.push_str(", repeatable");
    }
    text
}

fn default(arg: &Arg) -> String {
    // A switch's implicit `false` is no default worth a column.
    if arg.is_hide_default_value_set() || !takes_value(arg) {
        return String::new();
    }
    let values: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
    if values.is_empty() { String::new() } else { code(&values.join(",")) }
}

fn env(arg: &Arg) -> String {
    match arg.get_env() {
        Some(name) if !arg.is_hide_env_set() => code(&name.to_string_lossy()),
        _ => String::new(),
    }
}

fn description(arg: &Arg) -> String {
    let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
    let mut text = cell(&help);
    let possible: Vec<String> = if arg.is_hide_possible_values_set() {
        Vec::new()
    } else {
        arg.get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| match v.get_help() {
                Some(help) => format!("{}: {}", code(v.get_name()), cell(&help.to_string())),
                None => code(v.get_name()),
            })
            .collect()
    };
    if !possible.is_empty() {
        let separator = if possible.iter().any(|p| p.contains(": ")) { "<br>" } else { ", " };
        let gap = if text.is_empty() { "" } else { "<br><br>" };
        let _ = write!(text, "{gap}Possible values: {}", possible.join(separator));
    }
    text
}

fn first_paragraph(text: &str) -> String {
    text.split("\n\n").next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use clap::{Args, Parser, Subcommand};

    use super::*;

    /// A small tool with the shapes the binaries use: a global option, a subcommand tree, an
    /// environment variable, a delimiter, a value enum, a switch and a hidden flag.
    #[derive(Parser)]
    #[command(name = "tool", about = "A tool.")]
    struct Tool {
        /// Where state is kept.
        #[arg(long, global = true, env = "TOOL_STATE", default_value = "state")]
        state: String,
        #[command(subcommand)]
        command: ToolCommand,
    }

    #[derive(Subcommand)]
    enum ToolCommand {
        /// Lists things.
        ///
        /// At length.
        List(ListArgs),
        /// Not for users.
        #[command(hide = true)]
        Internal,
    }

    #[derive(Args)]
    struct ListArgs {
        /// Names to list, comma-separated.
        #[arg(long, short, value_delimiter = ',')]
        names: Vec<String>,
        /// How to list them.
        #[arg(long, value_enum, default_value_t = Style::Long)]
        style: Style,
        /// Print more.
        #[arg(long)]
        verbose: bool,
        /// Never shown.
        #[arg(long, hide = true)]
        secret: bool,
    }

    #[derive(Clone, clap::ValueEnum)]
    enum Style {
        /// One line each.
        Long,
        Short,
    }

    fn tool_page() -> String {
        render("Tool", "tests", vec![Tool::command()])
    }

    #[test]
    fn every_visible_command_gets_a_section_with_its_usage() {
        let page = tool_page();
        assert!(page.starts_with("_Generated from tests by `cargo run -p taxi-docgen`"), "{page}");
        assert!(page.contains("\n## `tool`\n\nA tool.\n\n```text\nUsage: tool [OPTIONS] <COMMAND>\n```"), "{page}");
        assert!(
            page.contains("\n### `tool list`\n\nLists things.\n\nAt length.\n\n```text\nUsage: tool list"),
            "{page}"
        );
        assert!(page.contains("| [`list`](#tool-list) | Lists things |"), "{page}");
        assert!(page.contains("- [`tool`](#tool)\n  - [`tool list`](#tool-list)\n"), "{page}");
        assert!(!page.contains("internal"), "hidden command listed: {page}");
        assert!(!page.contains("`help`"), "clap's help command listed: {page}");
    }

    #[test]
    fn arguments_show_names_values_defaults_environment_and_possible_values() {
        let page = tool_page();
        assert!(page.contains("| `--state` | `<STATE>` | `state` | `TOOL_STATE` | Where state is kept |"), "{page}");
        assert!(
            page.contains(
                "| `-n`, `--names` | `<NAMES>`, `,`-separated, repeatable |  |  | Names to list, comma-separated |"
            ),
            "{page}"
        );
        assert!(
            page.contains("| `--style` | `<STYLE>` | `long` |  | How to list them<br><br>Possible values: `long`: One line each<br>`short` |"),
            "{page}"
        );
        assert!(page.contains("| `--verbose` | none |  |  | Print more |"), "{page}");
        assert!(!page.contains("secret"), "hidden flag listed: {page}");
        assert!(!page.contains("`--help` |"), "clap's help flag listed: {page}");
    }

    #[test]
    fn a_global_option_is_listed_once_and_referred_to_from_subcommands() {
        let page = tool_page();
        assert_eq!(page.matches("| `--state` |").count(), 1, "{page}");
        assert!(page.contains("The options of [`tool`](#tool) apply too."), "{page}");
    }

    #[test]
    fn both_binaries_are_on_the_page() {
        let page = page();
        for heading in [
            "\n## `taxi-worker`\n",
            "\n### `taxi-worker run`\n",
            "\n#### `taxi-worker dead-letter list`\n",
            "\n## `taxi-operator`\n",
            "\n### `taxi-operator run`\n",
            "\n### `taxi-operator simulate`\n",
        ] {
            assert!(page.contains(heading), "no {heading:?} in {page}");
        }
        assert!(page.contains("`TAXI_SERVICE_ACCOUNT_POLICY`"), "{page}");
    }
}
