//! `alarm list|disarm`, as etcdctl 3.4 prints them.

use std::time::Duration;

use ballast_api::etcdserverpb::alarm_request::AlarmAction;
use ballast_api::etcdserverpb::maintenance_client::MaintenanceClient;
use ballast_api::etcdserverpb::{AlarmRequest, AlarmResponse, AlarmType};
use ballast_state::mvcc::alarm_text;

use crate::output::{Format, Printer};
use crate::{call, connect_any, Cli, Failure};

#[derive(clap::Subcommand, Debug)]
pub enum AlarmCmd {
    /// Disarms all alarms
    Disarm,
    /// Lists all alarms
    List,
}

pub async fn run(cli: &Cli, p: &Printer, timeout: Duration, cmd: &AlarmCmd) -> Result<(), Failure> {
    if p.format == Format::Table {
        return Err(p.unsupported());
    }
    let mut m = crate::limited!(MaintenanceClient::new(connect_any(cli).await?));
    let list = AlarmRequest {
        action: AlarmAction::Get as i32,
        member_id: 0,
        alarm: AlarmType::None as i32,
    };
    let resp = match cmd {
        AlarmCmd::List => call(timeout, m.alarm(list)).await?.into_inner(),
        AlarmCmd::Disarm => {
            // The client library's disarm-all: list, then clear each one; the answer gathers
            // what was cleared (and carries no header).
            let active = call(timeout, m.alarm(list)).await?.into_inner().alarms;
            let mut out = AlarmResponse::default();
            for a in active {
                let req = AlarmRequest {
                    action: AlarmAction::Deactivate as i32,
                    member_id: a.member_id,
                    alarm: a.alarm,
                };
                out.alarms
                    .extend(call(timeout, m.alarm(req)).await?.into_inner().alarms);
            }
            out
        }
    };
    print(p, &resp);
    Ok(())
}

fn print(p: &Printer, r: &AlarmResponse) {
    match p.format {
        Format::Json => {
            let mut o = serde_json::Map::new();
            if let Some(h) = crate::output::header_json(&r.header) {
                o.insert("header".into(), h);
            }
            if !r.alarms.is_empty() {
                let alarms: Vec<serde_json::Value> = r
                    .alarms
                    .iter()
                    .map(|a| {
                        let mut m = serde_json::Map::new();
                        if a.member_id != 0 {
                            m.insert("memberID".into(), a.member_id.into());
                        }
                        if a.alarm != 0 {
                            m.insert("alarm".into(), a.alarm.into());
                        }
                        serde_json::Value::Object(m)
                    })
                    .collect();
                o.insert("alarms".into(), alarms.into());
            }
            println!("{}", serde_json::Value::Object(o));
        }
        Format::Fields => {
            p.header_fields(&r.header);
            for a in &r.alarms {
                println!("\"MemberID\" : {}", a.member_id);
                let name = AlarmType::try_from(a.alarm)
                    .map(|t| t.as_str_name().to_string())
                    .unwrap_or_else(|_| a.alarm.to_string());
                println!("\"AlarmType\" : {name}");
                println!();
            }
        }
        _ => {
            for a in &r.alarms {
                println!("{}", alarm_text(a));
            }
        }
    }
}
