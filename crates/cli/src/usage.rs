//! etcdctl's (cobra + pflag) help screens and flag errors, rendered from the clap tree so
//! help can never drift from the flags ballastctl really accepts.

use clap::{builder::ValueParser, Arg, ArgAction, Command};

/// What a command line asked for that is not a command to run.
pub enum Outcome {
    /// `--help`, or a command group without a subcommand: usage on stdout, exit 0.
    Help(String),
    /// A flag error: usage on stdout, the error twice on stderr (cobra, then etcdctl), exit 1.
    FlagError { usage: String, msg: String },
    /// An unknown top-level command: cobra's two lines plus etcdctl's, exit 1.
    UnknownCommand(String),
}

/// pflag accepts `--flag`, `--flag=true|false` for booleans; clap's `SetTrue` would reject
/// the second form, so every boolean becomes an optional-value flag parsed the Go way.
pub fn go_flags(cmd: Command) -> Command {
    let cmd = cmd.mut_args(|a| {
        if matches!(a.get_action(), ArgAction::SetTrue) {
            a.action(ArgAction::Set)
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
                .default_value("false")
                .value_parser(go_bool)
        } else {
            a
        }
    });
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    names.iter().fold(cmd, |c, n| c.mut_subcommand(n, go_flags))
}

pub fn go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("strconv.ParseBool: parsing {s:?}: invalid syntax")),
    }
}

pub fn go_i64(s: &str) -> Result<i64, String> {
    s.parse()
        .map_err(|_| format!("strconv.ParseInt: parsing {s:?}: invalid syntax"))
}

/// The subcommand path a command line names, skipping flags (used to pick the usage screen).
fn path_of<'a>(root: &'a Command, argv: &[String]) -> Vec<&'a Command> {
    let mut path = vec![root];
    for a in argv.iter().skip(1) {
        if a == "--" {
            break;
        }
        if a.starts_with('-') {
            continue;
        }
        let cur = path[path.len() - 1];
        match cur.find_subcommand(a) {
            Some(sub) => path.push(sub),
            None if cur.has_subcommands() => continue,
            None => break,
        }
    }
    path
}

/// Turns a clap parse error into what etcdctl would do for the same command line.
pub fn outcome(root: &Command, argv: &[String], e: &clap::Error) -> Outcome {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let path = path_of(root, argv);
    let usage = render(root, &path);
    let ctx = |k: ContextKind| match e.get(k) {
        Some(ContextValue::String(s)) => s.clone(),
        Some(ContextValue::Strings(v)) => v.first().cloned().unwrap_or_default(),
        _ => String::new(),
    };
    let flag_name = |raw: String| raw.split([' ', '=', '[']).next().unwrap_or("").to_string();
    let msg = match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            return Outcome::Help(usage)
        }
        ErrorKind::InvalidSubcommand if path.len() == 1 => {
            return Outcome::UnknownCommand(ctx(ContextKind::InvalidSubcommand))
        }
        // cobra shows a group's help for an unknown subcommand of it.
        ErrorKind::InvalidSubcommand => return Outcome::Help(usage),
        ErrorKind::UnknownArgument => {
            let arg = ctx(ContextKind::InvalidArg);
            let name = flag_name(arg.clone());
            match name.strip_prefix("--") {
                Some(_) => format!("unknown flag: {name}"),
                None => {
                    let c = name.trim_start_matches('-').chars().next().unwrap_or('-');
                    format!("unknown shorthand flag: '{c}' in {arg}")
                }
            }
        }
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let flag = flag_name(ctx(ContextKind::InvalidArg));
            let value = ctx(ContextKind::InvalidValue);
            match std::error::Error::source(e) {
                Some(cause) => format!("invalid argument {value:?} for {flag:?} flag: {cause}"),
                None if value.is_empty() => format!("flag needs an argument: {flag}"),
                None => format!("invalid argument {value:?} for {flag:?} flag"),
            }
        }
        ErrorKind::NoEquals => format!("flag needs an argument: {}", ctx(ContextKind::InvalidArg)),
        _ => e
            .to_string()
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ")
            .to_string(),
    };
    Outcome::FlagError { usage, msg }
}

/// The usage screen for one command path, in etcdctl's layout.
pub fn render(root: &Command, path: &[&Command]) -> String {
    let Some(cmd) = path.last().copied() else {
        return String::new();
    };
    let names: Vec<&str> = path.iter().skip(1).map(|c| c.get_name()).collect();
    let title = if names.is_empty() {
        root.get_name().to_string()
    } else {
        names.join(" ")
    };
    let about = cmd.get_about().map(|s| s.to_string()).unwrap_or_default();
    let mut out = format!(
        "NAME:\n\t{title} - {about}\n\nUSAGE:\n\t{}",
        root.get_name()
    );
    for n in &names {
        out.push(' ');
        out.push_str(n);
    }
    if cmd.has_subcommands() && path.len() > 1 {
        out.push_str(" <subcommand>");
    }
    let args = positional_usage(&names.join(" "));
    if !args.is_empty() {
        out.push(' ');
        out.push_str(args);
    }
    out.push_str(" [flags]\n\n");
    if let Some(long) = cmd.get_long_about() {
        out.push_str("DESCRIPTION:\n");
        for l in long.to_string().lines() {
            out.push('\t');
            out.push_str(l);
            out.push('\n');
        }
        out.push('\n');
    }
    if cmd.has_subcommands() {
        if path.len() == 1 {
            out.push_str(&format!("VERSION:\n\t{}\n\n", env!("CARGO_PKG_VERSION")));
        }
        out.push_str("API VERSION:\n\t3.6\n\n\nCOMMANDS:\n");
        let mut leaves = Vec::new();
        collect_leaves(cmd, "", path.len() == 1, &mut leaves);
        for (name, about) in leaves {
            out.push_str(&format!("\t{name}\t{about}\n"));
        }
        out.push('\n');
    }
    // Flags declared on this command (root's are its globals), then the inherited ones.
    let own: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| a.get_long().is_some())
        .collect();
    out.push_str("OPTIONS:\n");
    out.push_str(&flag_lines(own, cmd.get_name()));
    if path.len() > 1 {
        let inherited: Vec<&Arg> = path[..path.len() - 1]
            .iter()
            .flat_map(|c| c.get_arguments())
            .filter(|a| a.is_global_set() && a.get_long().is_some())
            .collect();
        out.push_str("\nGLOBAL OPTIONS:\n");
        out.push_str(&flag_lines(inherited, ""));
    }
    out.push('\n');
    tabwriter(&out)
}

/// Every runnable command under `cmd`, named by its path as etcdctl's root help lists them.
fn collect_leaves(cmd: &Command, prefix: &str, deep: bool, out: &mut Vec<(String, String)>) {
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("{prefix}{}", sub.get_name());
        if deep && sub.has_subcommands() {
            collect_leaves(sub, &format!("{name} "), deep, out);
        } else {
            let about = sub.get_about().map(|s| s.to_string()).unwrap_or_default();
            out.push((name, about));
        }
    }
    out.sort();
}

/// The arguments part of a command's USAGE line.
fn positional_usage(path: &str) -> &'static str {
    match path {
        "get" | "del" => "[options] <key> [range_end]",
        "put" => "[options] <key> <value> (<value> can also be given from stdin)",
        "txn" => "[options]",
        "compaction" => "[options] <revision>",
        "member add" => "<memberName> [options]",
        "member update" => "<memberID> [options]",
        "member remove" | "member promote" => "<memberID>",
        "move-leader" => "<transferee-member-id>",
        "lease grant" => "<ttl>",
        "lock" => "<lockname> [exec-command arg1 arg2 ...]",
        "elect" => "<election-name> [proposal]",
        "watch" => "[options] [key or prefix] [range_end] [--] [exec-command arg1 arg2 ...]",
        "lease revoke" | "lease timetolive" | "lease keep-alive" => "<leaseID>",
        _ => "",
    }
}

fn flag_lines(mut args: Vec<&Arg>, help_for: &str) -> String {
    args.sort_by_key(|a| a.get_long().unwrap_or(""));
    args.dedup_by_key(|a| a.get_long());
    args.retain(|a| a.get_long() != Some("help"));
    let mut rows: Vec<(&str, String, String)> = args
        .iter()
        .map(|a| {
            let long = a.get_long().unwrap_or("");
            let short = a
                .get_short()
                .map(|c| format!("  -{c}, "))
                .unwrap_or_else(|| "      ".into());
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            (long, format!("{short}--{long}{}", default_text(a)), help)
        })
        .collect();
    if !help_for.is_empty() {
        rows.push((
            "help",
            "  -h, --help[=false]".into(),
            format!("help for {help_for}"),
        ));
    }
    rows.sort_by_key(|r| r.0);
    rows.iter().map(|(_, f, h)| format!("{f}\t{h}\n")).collect()
}

/// pflag's `--name=default` text: booleans as `[=false]`, strings quoted, lists bracketed.
fn default_text(a: &Arg) -> String {
    let defaults: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    let first = defaults.first().cloned().unwrap_or_default();
    if a.get_num_args().is_some_and(|n| n.min_values() == 0) {
        return format!("[={first}]");
    }
    if a.get_value_delimiter().is_some() {
        return format!("=[{}]", defaults.join(","));
    }
    // Numbers and durations parse into typed values and print bare, as pflag does.
    if a.get_value_parser().type_id() == ValueParser::string().type_id() {
        format!("={first:?}")
    } else {
        format!("={first}")
    }
}

/// Go's text/tabwriter with (minwidth 0, tabwidth 8, padding 1, padchar '\t'), as cobra's
/// templates use it: consecutive lines sharing a column are aligned to a multiple of 8.
pub fn tabwriter(text: &str) -> String {
    let lines: Vec<Vec<&str>> = text.split('\n').map(|l| l.split('\t').collect()).collect();
    // widths[line][col]: the padded width of each tab-terminated cell.
    let mut widths: Vec<Vec<usize>> = lines.iter().map(|c| vec![0; c.len() - 1]).collect();
    let max_cols = lines.iter().map(|c| c.len() - 1).max().unwrap_or(0);
    for col in 0..max_cols {
        let mut i = 0;
        while i < lines.len() {
            if lines[i].len() - 1 <= col {
                i += 1;
                continue;
            }
            let start = i;
            while i < lines.len() && lines[i].len() - 1 > col {
                i += 1;
            }
            let w = lines[start..i]
                .iter()
                .map(|c| c[col].chars().count())
                .max()
                .unwrap_or(0);
            let w = if w == 0 { 0 } else { (w + 1).div_ceil(8) * 8 };
            for row in widths.iter_mut().take(i).skip(start) {
                row[col] = w;
            }
        }
    }
    let mut out = String::new();
    for (l, cells) in lines.iter().enumerate() {
        if l > 0 {
            out.push('\n');
        }
        for (c, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if c + 1 < cells.len() {
                let pad = widths[l][c].saturating_sub(cell.chars().count());
                let tabs = pad.div_ceil(8).max(usize::from(widths[l][c] == 0));
                out.push_str(&"\t".repeat(tabs));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabwriter_aligns_blocks_to_tab_stops() {
        let t =
            tabwriter("A:\n  --consistency=\"l\"\tx\n  --print-value-only[=false]\ty\n\n  -h\tz\n");
        assert_eq!(
            t,
            "A:\n  --consistency=\"l\"\t\tx\n  --print-value-only[=false]\ty\n\n  -h\tz\n"
        );
    }

    #[test]
    fn go_parsers_speak_go_errors() {
        assert_eq!(
            go_bool("maybe").unwrap_err(),
            "strconv.ParseBool: parsing \"maybe\": invalid syntax"
        );
        assert_eq!(go_i64("12"), Ok(12));
        assert!(go_i64("x").unwrap_err().starts_with("strconv.ParseInt"));
    }
}
