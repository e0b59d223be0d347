//! etcdctl 3.7's (cobra + pflag) help screens and flag errors. Flags come from the clap tree,
//! so help can never drift from the flags ballastctl really accepts; each command's `Use`,
//! `Short` and `Long` are etcdctl's (etcdutl's for `snapshot status` and `restore`).

use clap::{builder::ValueParser, Arg, ArgAction, Command};

/// What a command line asked for that is not a command to run.
pub enum Outcome {
    /// `--help`, or a command group without a subcommand: help on stdout, exit 0.
    Help(String),
    /// A flag error: the error and the command's usage on stderr, exit 1.
    FlagError { usage: String, msg: String },
    /// An unknown top-level command: cobra's error, suggestions and hint on stderr, exit 1.
    UnknownCommand(String),
}

/// Each command's path, cobra `Use`, `Short` and `Long`, as etcdctl 3.7 declares them.
const COMMANDS: &[(&str, &str, &str, &str)] = &[
    ("", "etcdctl", "A simple command line client for etcd3.", ""),
    ("alarm", "alarm <subcommand>", "Alarm related commands. Use `etcdctl alarm --help` to see subcommands", "Alarm related commands"),
    ("alarm disarm", "disarm", "Disarms all alarms", ""),
    ("alarm list", "list", "Lists all alarms", ""),
    ("auth", "auth <enable or disable>", "Enable or disable authentication. Use `etcdctl auth --help` to see subcommands", "Enable or disable authentication"),
    ("auth disable", "disable", "Disables authentication", ""),
    ("auth enable", "enable", "Enables authentication", ""),
    ("auth status", "status", "Returns authentication status", ""),
    ("check", "check <subcommand>", "commands for checking properties of the etcd cluster. Use `etcdctl check --help` to see subcommands", "commands for checking properties of the etcd cluster"),
    ("check datascale", "datascale [options]", "Check the memory usage of holding data for different workloads on a given server endpoint.", "If no endpoint is provided, localhost will be used. If multiple endpoints are provided, first endpoint will be used."),
    ("check perf", "perf [options]", "Check the performance of the etcd cluster", ""),
    ("compaction", "compaction [options] <revision>", "Compacts the event history in etcd", ""),
    ("defrag", "defrag", "Defragments the storage of the etcd members with given endpoints", ""),
    ("del", "del [options] <key> [range_end]", "Removes the specified key or range of keys [key, range_end)", ""),
    ("downgrade", "downgrade <TARGET_VERSION>", "Downgrade related commands. Use `etcdctl downgrade --help` to see subcommands", "Downgrade related commands"),
    ("downgrade cancel", "cancel", "Cancel the ongoing downgrade action to cluster", ""),
    ("downgrade enable", "enable <TARGET_VERSION>", "Start a downgrade action to cluster", ""),
    ("downgrade validate", "validate <TARGET_VERSION>", "Validate downgrade capability before starting downgrade", ""),
    ("elect", "elect <election-name> [proposal]", "Observes and participates in leader election", ""),
    ("endpoint", "endpoint <subcommand>", "Endpoint related commands. Use `etcdctl endpoint --help` to see subcommands", "Endpoint related commands"),
    ("endpoint hashkv", "hashkv", "Prints the KV history hash for each endpoint in --endpoints", ""),
    ("endpoint health", "health", "Checks the healthiness of endpoints specified in `--endpoints` flag", ""),
    ("endpoint status", "status", "Prints out the status of endpoints specified in `--endpoints` flag", "When --write-out is set to simple, this command prints out comma-separated status lists for each endpoint.\nThe items in the lists are endpoint, ID, version, db size, is leader, is learner, raft term, raft index, raft applied index, errors.\n"),
    ("get", "get [options] <key> [range_end]", "Gets the key or a range of keys", ""),
    ("help", "help [command]", "Help about any command", ""),
    ("lease", "lease <subcommand>", "Lease related commands. Use `etcdctl lease --help` to see subcommands", "Lease related commands"),
    ("lease grant", "grant <ttl>", "Creates leases", ""),
    ("lease keep-alive", "keep-alive [options] <leaseID>", "Keeps leases alive (renew)", ""),
    ("lease list", "list", "List all active leases", ""),
    ("lease revoke", "revoke <leaseID>", "Revokes leases", ""),
    ("lease timetolive", "timetolive <leaseID> [options]", "Get lease information", ""),
    ("lock", "lock <lockname> [exec-command arg1 arg2 ...]", "Acquires a named lock", ""),
    ("member", "member <subcommand>", "Membership related commands. Use `etcdctl member --help` to see subcommands", "Membership related commands"),
    ("member add", "add <memberName> [options]", "Adds a member into the cluster", ""),
    ("member list", "list", "Lists all members in the cluster", "When --write-out is set to simple, this command prints out comma-separated member lists for each endpoint.\nThe items in the lists are ID, Status, Name, Peer Addrs, Client Addrs, Is Learner.\n"),
    ("member promote", "promote <memberID>", "Promotes a non-voting member in the cluster", "Promotes a non-voting learner member to a voting one in the cluster.\n"),
    ("member remove", "remove <memberID>", "Removes a member from the cluster", ""),
    ("member update", "update <memberID> [options]", "Updates a member in the cluster", ""),
    ("move-leader", "move-leader <transferee-member-id>", "Transfers leadership to another etcd cluster member.", ""),
    ("options", "options", "Show the global command-line flags", ""),
    ("put", "put [options] <key> <value> (<value> can also be given from stdin)", "Puts the given key into the store", "\nPuts the given key into the store.\n\nWhen <value> begins with '-', <value> is interpreted as a flag.\nInsert '--' for workaround:\n\n$ put <key> -- <value>\n$ put -- <key> <value>\n\nIf <value> isn't given as a command line argument and '--ignore-value' is not specified,\nthis command tries to read the value from standard input.\n\nIf <lease> isn't given as a command line argument and '--ignore-lease' is not specified,\nthis command tries to read the value from standard input.\n\nFor example,\n$ cat file | put <key>\nwill store the content of the file to <key>.\n"),
    ("role", "role <subcommand>", "Role related commands. Use `etcdctl role --help` to see subcommands", "Role related commands"),
    ("role add", "add <role name>", "Adds a new role", ""),
    ("role delete", "delete <role name>", "Deletes a role", ""),
    ("role get", "get <role name>", "Gets detailed information of a role", ""),
    ("role grant-permission", "grant-permission [options] <role name> <permission type> <key> [endkey]", "Grants a key to a role", ""),
    ("role list", "list", "Lists all roles", ""),
    ("role revoke-permission", "revoke-permission <role name> <key> [endkey]", "Revokes a key from a role", ""),
    ("backup", "backup <subcommand>", "Scheduled backups in a directory or S3-compatible bucket (Ballast's own)", ""),
    ("backup export", "export <filename> --backup-url <url> [--to-revision R | --to-time T]", "Writes the state a backup store holds (newest, at a revision or at a time) as an etcd snapshot file", ""),
    ("backup list", "list --backup-url <s3://bucket/prefix | file:///path>", "Lists the scheduled backups in a backup store", ""),
    ("snapshot", "snapshot <subcommand>", "Manages etcd node snapshots", ""),
    ("snapshot restore", "restore <filename | --backup-url url> --data-dir {output dir} [options]", "Restores an etcd member snapshot to an etcd directory", ""),
    ("snapshot save", "save <filename>", "Stores an etcd node backend snapshot to a given file", ""),
    ("snapshot status", "status <filename>", "Gets backend snapshot status of a given file", "When --write-out is set to simple, this command prints out comma-separated status lists for each endpoint.\nThe items in the lists are hash, revision, total keys, total size.\n"),
    ("txn", "txn [options]", "Txn processes all the requests in one transaction", "Txn reads multiple etcd requests from standard input and applies them as a single atomic transaction.\n\nA transaction consists of three components:\n1) a list of conditions,\n2) a list of requests to apply if all the conditions are true,\n3) a list of requests to apply if any condition is false.\n\nExample interactive stdin usage:\n\n---\netcdctl txn -i\n# compares:\nmod(\"key1\") > \"0\"\n\n# success requests (get, put, delete):\nput key1 \"overwrote-key1\"\n\n# failure requests (get, put, delete):\nput key1 \"created-key1\"\nput key2 \"some extra key\"\n---\n\nRefer to https://github.com/etcd-io/etcd/blob/main/etcdctl/README.md#txn-options."),
    ("user", "user <subcommand>", "User related commands. Use `etcdctl user --help` to see subcommands", "User related commands"),
    ("user add", "add <user name or user:password> [options]", "Adds a new user", ""),
    ("user delete", "delete <user name>", "Deletes a user", ""),
    ("user get", "get <user name> [options]", "Gets detailed information of a user", ""),
    ("user grant-role", "grant-role <user name> <role name>", "Grants a role to a user", ""),
    ("user list", "list", "Lists all users", ""),
    ("user passwd", "passwd <user name> [options]", "Changes password of user", ""),
    ("user revoke-role", "revoke-role <user name> <role name>", "Revokes a role from a user", ""),
    ("version", "version", "Prints the version of etcdctl", ""),
    ("watch", "watch [options] [key or prefix] [range_end] [--] [exec-command arg1 arg2 ...]", "Watches events stream on keys or prefixes", ""),
];

/// etcdctl's examples for snapshot saving (cobra's `Example`, as `util.Normalize` indents it).
const SNAPSHOT_EXAMPLE: &str = "  # Save snapshot to a given file
  etcdctl snapshot save /backup/etcd-snapshot.db
  \n  # Get snapshot from given address and save it to file
  etcdctl snapshot save --endpoints=127.0.0.1:3000 /backup/etcd-snapshot.db
  \n  # Get snapshot from given address with certificates
  etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/etcd/ca.crt --cert=/etc/etcd/etcd.crt --key=/etc/etcd/etcd.key snapshot save /backup/etcd-snapshot.db
  \n  # Get snapshot with certain user and password
  etcdctl --user=root --password=password123 snapshot save /backup/etcd-snapshot.db
  \n  # Get snapshot from given address with timeout
  etcdctl --endpoints=https://127.0.0.1:2379 --dial-timeout=20s snapshot save /backup/etcd-snapshot.db
  \n  # Save snapshot with desirable time format
  etcdctl snapshot save /mnt/backup/etcd/backup_$(date +%Y%m%d_%H%M%S).db";

/// The root help's command groups (cobra groups), with the commands in each.
const GROUPS: &[(&str, &[&str])] = &[
    (
        "Key-value commands",
        &["compaction", "del", "get", "lease", "put", "txn", "watch"],
    ),
    (
        "Cluster maintenance commands",
        &[
            "alarm",
            "defrag",
            "downgrade",
            "endpoint",
            "member",
            "move-leader",
            "snapshot",
        ],
    ),
    ("Concurrency commands", &["elect", "lock"]),
    ("Authentication commands", &["auth", "role", "user"]),
    ("Utility commands", &["check", "help", "options", "version"]),
];

/// What etcdctl's help appends to every help screen.
const OPTIONS_HINT: &str =
    "Use \"etcdctl options\" for a list of global command-line options (applies to all commands).\n";

fn entry(path: &str) -> (&'static str, &'static str, &'static str) {
    COMMANDS
        .iter()
        .find(|c| c.0 == path)
        .map(|c| (c.1, c.2, c.3))
        .unwrap_or(("", "", ""))
}

/// etcdctl's texts name etcdctl; ours name this program (a URL keeps etcd's path).
fn named(text: &str, name: &str) -> String {
    text.replace("etcdctl/", "\u{0}")
        .replace("etcdctl", name)
        .replace('\u{0}', "etcdctl/")
}

/// pflag accepts `--flag`, `--flag=true|false` for booleans; clap's `SetTrue` would reject
/// the second form, so every boolean becomes an optional-value flag parsed the Go way.
pub fn go_flags(cmd: Command) -> Command {
    // cobra.EnablePrefixMatching: a unique prefix names a command.
    let cmd = cmd.infer_subcommands(true).mut_args(|a| {
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
        match find_sub(cur, a) {
            Some(sub) => path.push(sub),
            None if cur.has_subcommands() => continue,
            None => break,
        }
    }
    path
}

/// A subcommand by name or, as cobra's prefix matching allows, by a unique prefix of it.
fn find_sub<'a>(cmd: &'a Command, name: &str) -> Option<&'a Command> {
    cmd.find_subcommand(name).or_else(|| {
        let mut m = cmd
            .get_subcommands()
            .filter(|s| s.get_name().starts_with(name));
        match (m.next(), m.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    })
}

/// `help get`: the command path after `help`, as cobra's help command resolves it; `Err`
/// with the words when they name no command.
pub fn help_path<'a>(root: &'a Command, argv: &[String]) -> Result<Vec<&'a Command>, Vec<String>> {
    let mut path = vec![root];
    let words: Vec<String> = argv
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .skip_while(|a| *a != "help")
        .skip(1)
        .cloned()
        .collect();
    for w in &words {
        match find_sub(path[path.len() - 1], w) {
            Some(sub) => path.push(sub),
            None => return Err(words),
        }
    }
    Ok(path)
}

/// cobra's `help` command: the help of the command named, or for words naming none, "Unknown
/// help topic" and the root's usage on stderr (exit 0 either way).
pub fn help_command(root: &Command, argv: &[String]) -> (String, String) {
    match help_path(root, argv) {
        Ok(path) => (help(root, &path), String::new()),
        Err(words) => {
            let topic: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
            (
                String::new(),
                format!(
                    "Unknown help topic [{}]\n{}",
                    topic.join(" "),
                    usage(root, &[root], root.get_name())
                ),
            )
        }
    }
}

/// Turns a clap parse error into what etcdctl would do for the same command line.
pub fn outcome(root: &Command, argv: &[String], e: &clap::Error) -> Outcome {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let path = path_of(root, argv);
    let ctx = |k: ContextKind| match e.get(k) {
        Some(ContextValue::String(s)) => s.clone(),
        Some(ContextValue::Strings(v)) => v.first().cloned().unwrap_or_default(),
        _ => String::new(),
    };
    let flag_name = |raw: String| raw.split([' ', '=', '[']).next().unwrap_or("").to_string();
    let msg = match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        | ErrorKind::MissingSubcommand => return Outcome::Help(help(root, &path)),
        ErrorKind::InvalidSubcommand if path.len() == 1 => {
            return Outcome::UnknownCommand(ctx(ContextKind::InvalidSubcommand))
        }
        // cobra shows a group's help for an unknown subcommand of it.
        ErrorKind::InvalidSubcommand => return Outcome::Help(help(root, &path)),
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
    Outcome::FlagError {
        usage: usage(root, &path, root.get_name()),
        msg,
    }
}

/// cobra's "unknown command" error for the root, with its suggestions (commands within two
/// edits of the word, or starting with it).
pub fn unknown_command(root: &Command, word: &str) -> String {
    let name = root.get_name();
    let lower = word.to_lowercase();
    let suggestions: Vec<&str> = root
        .get_subcommands()
        .map(|s| s.get_name())
        .filter(|n| levenshtein(n, &lower) <= 2 || n.starts_with(&lower))
        .collect();
    let mut out = format!("Error: unknown command {word:?} for {name:?}");
    if !suggestions.is_empty() {
        out.push_str("\n\nDid you mean this?\n");
        for s in suggestions {
            out.push_str(&format!("\t{s}\n"));
        }
    }
    out.push_str(&format!("\nRun '{name} --help' for usage.\n"));
    out
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A command's help screen: its long (or short) text, its usage, etcdctl's options hint.
pub fn help(root: &Command, path: &[&Command]) -> String {
    let name = root.get_name();
    let key = key_of(path);
    let (_, short, long) = entry(&key);
    let text = if long.is_empty() { short } else { long };
    let mut out = String::new();
    let text = named(text, name);
    let text = text.trim_end();
    if !text.is_empty() {
        out.push_str(text);
        out.push_str("\n\n");
    }
    out.push_str(&usage(root, path, name));
    out.push_str(&named(OPTIONS_HINT, name));
    out
}

fn key_of(path: &[&Command]) -> String {
    path.iter()
        .skip(1)
        .map(|c| c.get_name())
        .collect::<Vec<_>>()
        .join(" ")
}

/// cobra's usage template for one command path; `prefix` names the root (empty for the
/// command tree etcdctl builds per txn line).
pub fn usage(root: &Command, path: &[&Command], prefix: &str) -> String {
    let Some(cmd) = path.last().copied() else {
        return String::new();
    };
    let name = root.get_name();
    let key = key_of(path);
    let command_path = std::iter::once(prefix)
        .chain(path.iter().skip(1).map(|c| c.get_name()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = String::from("Usage:");
    let runnable = !cmd.has_subcommands();
    if runnable {
        let (use_, _, _) = entry(&key);
        let parent = command_path
            .rsplit_once(' ')
            .map(|(p, _)| p)
            .unwrap_or_default();
        out.push_str(&format!("\n  {parent} {use_} [flags]"));
    }
    if cmd.has_subcommands() {
        out.push_str(&format!("\n  {command_path} [command]"));
    }
    if key == "snapshot" || key == "snapshot save" {
        out.push_str("\n\nExamples:\n");
        out.push_str(&named(SNAPSHOT_EXAMPLE, name));
    }
    if cmd.has_subcommands() {
        let subs: Vec<(&str, String)> = cmd
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
            .map(|s| {
                let sub_key = if key.is_empty() {
                    s.get_name().to_string()
                } else {
                    format!("{key} {}", s.get_name())
                };
                (s.get_name(), named(entry(&sub_key).1, name))
            })
            .collect();
        let pad = subs.iter().map(|s| s.0.len()).max().unwrap_or(0).max(11);
        let line = |n: &str, short: &str| format!("\n  {n:<pad$} {short}");
        if path.len() == 1 {
            for (title, names) in GROUPS {
                out.push_str(&format!("\n\n{title}"));
                for n in *names {
                    let short = if *n == "help" {
                        entry("help").1.to_string()
                    } else if let Some(s) = subs.iter().find(|s| s.0 == *n) {
                        s.1.clone()
                    } else {
                        continue;
                    };
                    out.push_str(&line(n, &short));
                }
            }
        } else {
            out.push_str("\n\nAvailable Commands:");
            let mut subs = subs;
            subs.sort();
            for (n, short) in &subs {
                out.push_str(&line(n, short));
            }
        }
    }
    // The root's flags are all hidden (`etcdctl options` lists them).
    if path.len() > 1 {
        let own: Vec<&Arg> = cmd
            .get_arguments()
            .filter(|a| a.get_long().is_some() && !a.is_global_set())
            .filter(|a| !root.get_arguments().any(|r| r.get_id() == a.get_id()))
            .chain(cmd.get_arguments().filter(|a| {
                a.is_global_set() && !root.get_arguments().any(|r| r.get_id() == a.get_id())
            }))
            .collect();
        let own_names: Vec<&str> = own.iter().filter_map(|a| a.get_long()).collect();
        out.push_str("\n\nFlags:\n");
        out.push_str(flag_usages(own, Some(cmd.get_name())).trim_end());
        // Flags a parent (not the root) declared for its whole subtree.
        let inherited: Vec<&Arg> = path[1..path.len() - 1]
            .iter()
            .flat_map(|c| c.get_arguments())
            .filter(|a| a.is_global_set() && a.get_long().is_some())
            .filter(|a| !root.get_arguments().any(|r| r.get_id() == a.get_id()))
            .filter(|a| !own_names.contains(&a.get_long().unwrap_or("")))
            .collect();
        if !inherited.is_empty() {
            out.push_str("\n\nGlobal Flags:\n");
            out.push_str(flag_usages(inherited, None).trim_end());
        }
    }
    if cmd.has_subcommands() {
        out.push_str(&format!(
            "\n\nUse \"{command_path} [command] --help\" for more information about a command."
        ));
    }
    out.push('\n');
    out
}

/// `options`: every global flag, as pflag's `FlagUsages` prints them.
pub fn options(root: &Command) -> String {
    let globals: Vec<&Arg> = root
        .get_arguments()
        .filter(|a| a.is_global_set() && a.get_long().is_some())
        .collect();
    format!(
        "The following options can be passed to any command:\n\n{}",
        flag_usages(globals, None)
    )
}

/// pflag's `FlagUsages`: flags sorted by name, `-s, --name type`, usage aligned in one column,
/// non-zero defaults appended. `help_for` adds cobra's `-h, --help` flag.
fn flag_usages(mut args: Vec<&Arg>, help_for: Option<&str>) -> String {
    args.sort_by_key(|a| a.get_long().unwrap_or(""));
    args.dedup_by_key(|a| a.get_long());
    args.retain(|a| a.get_long() != Some("help") && !a.is_hide_set());
    let mut rows: Vec<(String, String)> = args
        .iter()
        .map(|a| {
            let long = a.get_long().unwrap_or("");
            let mut line = match a.get_short() {
                Some(c) => format!("  -{c}, --{long}"),
                None => format!("      --{long}"),
            };
            let (kind, zero) = go_type(a);
            if !kind.is_empty() {
                line.push(' ');
                line.push_str(kind);
            }
            let mut usage = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            let default = go_default(a);
            if default != zero {
                if kind == "string" {
                    usage.push_str(&format!(" (default {default:?})"));
                } else {
                    usage.push_str(&format!(" (default {default})"));
                }
            }
            (line, usage)
        })
        .collect();
    if let Some(name) = help_for {
        rows.push(("  -h, --help".into(), format!("help for {name}")));
        rows.sort_by(|a, b| flag_key(&a.0).cmp(flag_key(&b.0)));
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(l, u)| format!("{l:<width$}   {u}\n"))
        .collect()
}

fn flag_key(line: &str) -> &str {
    line.split("--").nth(1).unwrap_or("")
}

/// pflag's type word for a flag (empty for booleans) and the text of its zero value.
fn go_type(a: &Arg) -> (&'static str, &'static str) {
    if a.get_num_args().is_some_and(|n| n.min_values() == 0) {
        return ("", "false");
    }
    if a.get_value_delimiter().is_some() {
        return ("strings", "[]");
    }
    let id = a.get_value_parser().type_id();
    if id == ValueParser::string().type_id() {
        ("string", "")
    } else if id == ValueParser::from(clap::value_parser!(u64)).type_id()
        || id == ValueParser::from(clap::value_parser!(u32)).type_id()
    {
        ("uint", "0")
    } else if id == ValueParser::new(crate::parse_duration).type_id() {
        ("duration", "0s")
    } else {
        ("int", "0")
    }
}

/// A flag's default as pflag prints it (`[a,b]` for lists).
fn go_default(a: &Arg) -> String {
    let defaults: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if a.get_value_delimiter().is_some() {
        return format!("[{}]", defaults.join(","));
    }
    defaults.first().cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_parsers_speak_go_errors() {
        assert_eq!(
            go_bool("maybe").unwrap_err(),
            "strconv.ParseBool: parsing \"maybe\": invalid syntax"
        );
        assert_eq!(go_i64("12"), Ok(12));
        assert!(go_i64("x").unwrap_err().starts_with("strconv.ParseInt"));
    }

    #[test]
    fn suggestions_are_within_two_edits_or_prefixed() {
        assert_eq!(levenshtein("gett", "get"), 1);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }

    #[test]
    fn flag_usages_align_as_pflag() {
        let cmd = Command::new("x")
            .arg(
                Arg::new("limit")
                    .long("limit")
                    .value_parser(go_i64)
                    .default_value("0")
                    .help("Max"),
            )
            .arg(
                Arg::new("c")
                    .long("consistency")
                    .default_value("l")
                    .help("L or S"),
            );
        let args: Vec<&Arg> = cmd.get_arguments().collect();
        assert_eq!(
            flag_usages(args, Some("x")),
            "      --consistency string   L or S (default \"l\")\n  -h, --help                 help for x\n      --limit int            Max\n"
        );
    }
}
