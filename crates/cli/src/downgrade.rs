//! `downgrade validate|enable|cancel`, as etcdctl 3.7 prints them.

use std::time::Duration;

use ballast_api::etcdserverpb::downgrade_request::DowngradeAction;
use ballast_api::etcdserverpb::maintenance_client::MaintenanceClient;
use ballast_api::etcdserverpb::{DowngradeRequest, DowngradeResponse};

use crate::output::{Format, Printer};
use crate::{call, connect_any, Cli, Failure};

#[derive(clap::Subcommand, Debug)]
pub enum DowngradeCmd {
    /// Validate downgrade capability before starting downgrade
    Validate { args: Vec<String> },
    /// Start a downgrade action to cluster
    Enable { args: Vec<String> },
    /// Cancel the ongoing downgrade action to cluster
    Cancel,
}

/// etcdctl's checks of the one `<TARGET_VERSION>` argument.
fn target(args: &[String]) -> Result<String, Failure> {
    match args {
        [] => Err(Failure::BadArgs("TARGET_VERSION not provided".into())),
        [v] if v.is_empty() => Err(Failure::BadArgs("target version not provided".into())),
        [v] => Ok(v.clone()),
        _ => Err(Failure::BadArgs("too many arguments".into())),
    }
}

pub async fn run(
    cli: &Cli,
    p: &Printer,
    timeout: Duration,
    cmd: &DowngradeCmd,
) -> Result<(), Failure> {
    let (action, version, word) = match cmd {
        DowngradeCmd::Validate { args } => (DowngradeAction::Validate, target(args)?, "validate"),
        DowngradeCmd::Enable { args } => (DowngradeAction::Enable, target(args)?, "enable"),
        DowngradeCmd::Cancel => (DowngradeAction::Cancel, String::new(), "cancel"),
    };
    let mut m = crate::limited!(MaintenanceClient::new(connect_any(cli).await?));
    let req = DowngradeRequest {
        action: action as i32,
        version,
    };
    let r = call(timeout, m.downgrade(req)).await?.into_inner();
    print(p, word, &r)
}

fn print(p: &Printer, word: &str, r: &DowngradeResponse) -> Result<(), Failure> {
    match p.format {
        Format::Simple => println!("Downgrade {word} success, cluster version {}", r.version),
        Format::Json => {
            let mut o = serde_json::Map::new();
            if let Some(h) = crate::output::header_json(&r.header) {
                o.insert("header".into(), h);
            }
            if !r.version.is_empty() {
                o.insert("version".into(), r.version.clone().into());
            }
            println!("{}", serde_json::Value::Object(o));
        }
        Format::Table | Format::Fields => return Err(p.unsupported()),
    }
    Ok(())
}
