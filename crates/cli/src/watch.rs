//! `watch`: events printed as etcdctl prints them, `-i` interactive mode, and exec mode
//! (`watch key -- command`, run once per event with `ETCD_WATCH_*` set).

use std::io::BufRead;

use ballast_api::etcdserverpb::{
    watch_client::WatchClient, watch_request::RequestUnion, WatchCreateRequest, WatchRequest,
    WatchResponse,
};
use ballast_api::mvccpb::{event::EventType, Event};
use serde_json::{Map, Value};
use tokio_stream::StreamExt;

use crate::output::{header_json, kv_json, Format, Printer};
use crate::{connect_any, prefix_end, Cli, Failure};

/// etcdctl's exit code when the server cancels a watch.
const EXIT_INTERRUPTED: u8 = 5;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct WatchArgs {
    /// Interactive mode
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Watch on a prefix if prefix is set
    #[arg(long)]
    prefix: bool,
    /// Revision to start watching
    #[arg(long, default_value = "0", value_parser = crate::usage::go_i64)]
    rev: i64,
    /// get the previous key-value pair before the event happens
    #[arg(long = "prev-kv")]
    prev_kv: bool,
    /// get periodic watch progress notification from server
    #[arg(long = "progress-notify")]
    progress_notify: bool,
    args: Vec<String>,
    /// A command to run for each event (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

fn create_request(a: &WatchArgs) -> Result<WatchCreateRequest, Failure> {
    if a.args.is_empty() || a.args.len() > 2 {
        return Err(Failure::BadArgs("bad number of arguments".into()));
    }
    if a.prefix && a.args.len() == 2 {
        return Err(Failure::BadArgs(
            "`range_end` and `--prefix` are mutually exclusive".into(),
        ));
    }
    let key = a.args[0].as_bytes().to_vec();
    let range_end = match a.args.get(1) {
        Some(end) => end.as_bytes().to_vec(),
        None if a.prefix && key.is_empty() => vec![0],
        None if a.prefix => prefix_end(&key),
        None => vec![],
    };
    Ok(WatchCreateRequest {
        key,
        range_end,
        start_revision: a.rev.max(0),
        prev_kv: a.prev_kv,
        progress_notify: a.progress_notify,
        ..Default::default()
    })
}

fn event_name(e: &Event) -> &'static str {
    if e.r#type == EventType::Delete as i32 {
        "DELETE"
    } else {
        "PUT"
    }
}

fn print_response(p: &Printer, r: &WatchResponse) {
    match p.format {
        Format::Json => {
            let mut m = Map::new();
            m.insert(
                "Header".into(),
                header_json(&r.header).unwrap_or(Value::Object(Map::new())),
            );
            let events: Vec<Value> = r
                .events
                .iter()
                .map(|e| {
                    let mut o = Map::new();
                    if e.r#type != 0 {
                        o.insert("type".into(), e.r#type.into());
                    }
                    if let Some(kv) = &e.kv {
                        o.insert("kv".into(), kv_json(kv));
                    }
                    if let Some(kv) = &e.prev_kv {
                        o.insert("prev_kv".into(), kv_json(kv));
                    }
                    Value::Object(o)
                })
                .collect();
            m.insert("Events".into(), events.into());
            m.insert("CompactRevision".into(), r.compact_revision.into());
            m.insert("Canceled".into(), r.canceled.into());
            m.insert("Created".into(), r.created.into());
            println!("{}", Value::Object(m));
        }
        Format::Fields => {
            p.header_fields(&r.header);
            for e in &r.events {
                println!("\"Type\" : {}", event_name(e));
                if let Some(kv) = &e.prev_kv {
                    p.kv_fields("Prev", kv);
                }
                if let Some(kv) = &e.kv {
                    p.kv_fields("", kv);
                }
            }
        }
        _ => {
            for e in &r.events {
                println!("{}", event_name(e));
                if let Some(kv) = &e.prev_kv {
                    p.kv_simple(kv, false);
                }
                if let Some(kv) = &e.kv {
                    p.kv_simple(kv, false);
                }
            }
        }
    }
}

/// Runs the exec-mode command for one event, with etcdctl's `ETCD_WATCH_*` variables.
fn exec(command: &[String], rev: i64, e: &Event) {
    let Some((prog, args)) = command.split_first() else {
        return;
    };
    let kv = e.kv.clone().unwrap_or_default();
    let quote = |b: &[u8]| format!("{:?}", String::from_utf8_lossy(b));
    let status = std::process::Command::new(prog)
        .args(args)
        .env("ETCD_WATCH_REVISION", rev.to_string())
        .env("ETCD_WATCH_KEY", quote(&kv.key))
        .env("ETCD_WATCH_EVENT_TYPE", format!("{:?}", event_name(e)))
        .env("ETCD_WATCH_VALUE", quote(&kv.value))
        .status();
    if let Err(err) = status {
        eprintln!("command {prog:?} error ({err})");
    }
}

/// Prints one watch stream's responses until the server cancels it or it ends.
async fn follow(
    mut responses: tonic::Streaming<WatchResponse>,
    p: &Printer,
    command: &[String],
) -> Result<(), Failure> {
    while let Some(r) = responses.next().await {
        let r = r.map_err(Failure::Grpc)?;
        if r.created && r.events.is_empty() && !r.canceled {
            continue;
        }
        // As etcdctl: the cancel reason or the progress line first, then the response as
        // the format shows it (`simple` shows events only; `json` and `fields` all of it).
        let rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
        if r.canceled {
            let why = if r.compact_revision != 0 {
                "etcdserver: mvcc: required revision has been compacted".to_string()
            } else {
                r.cancel_reason.clone()
            };
            eprintln!("watch was canceled ({why})");
        } else if r.events.is_empty() && !r.created && r.compact_revision == 0 && rev != 0 {
            println!("progress notify: {rev}");
        }
        print_response(p, &r);
        if r.canceled {
            break;
        }
        for e in &r.events {
            exec(command, rev, e);
        }
    }
    Err(Failure::Exit(
        EXIT_INTERRUPTED,
        "watch is canceled by the server".into(),
    ))
}

/// Opens a watch; the returned sender keeps the request side open for the watch's life.
async fn start(
    cli: &Cli,
    req: WatchCreateRequest,
) -> Result<
    (
        tonic::Streaming<WatchResponse>,
        tokio::sync::mpsc::Sender<WatchRequest>,
    ),
    Failure,
> {
    let mut c = crate::limited!(WatchClient::new(connect_any(cli).await?));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let _ = tx
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(req)),
        })
        .await;
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let responses = c.watch(stream).await.map_err(Failure::Grpc)?.into_inner();
    Ok((responses, tx))
}

pub async fn run(cli: &Cli, p: &Printer, a: &WatchArgs) -> Result<(), Failure> {
    if a.interactive {
        return interactive(cli, p).await;
    }
    let req = create_request(a)?;
    let (responses, _open) = start(cli, req).await?;
    follow(responses, p, &a.command).await
}

/// `watch -i`: each stdin line is a `watch ...` command; the input ending ends the session.
async fn interactive(cli: &Cli, p: &Printer) -> Result<(), Failure> {
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<Option<String>>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.blocking_send(Some(line)).is_err() {
                return;
            }
        }
        let _ = lines_tx.blocking_send(None);
    });
    let printer = Printer {
        format: p.format,
        hex: p.hex,
    };
    let printer = std::sync::Arc::new(printer);
    while let Some(Some(line)) = lines.recv().await {
        let words: Vec<String> = line.split_whitespace().map(String::from).collect();
        if words.first().map(String::as_str) != Some("watch") {
            eprintln!("Invalid command {line:?} (only support watch)");
            continue;
        }
        let parsed = <WatchArgs as clap::Args>::augment_args(clap::Command::new("watch"))
            .try_get_matches_from(&words)
            .and_then(|m| <WatchArgs as clap::FromArgMatches>::from_arg_matches(&m));
        let req = match parsed
            .map_err(|e| e.to_string())
            .map(|a| create_request(&a))
        {
            Ok(Ok(r)) => r,
            _ => {
                eprintln!("Invalid command {line:?}");
                continue;
            }
        };
        let (responses, open) = start(cli, req).await?;
        let printer = printer.clone();
        tokio::spawn(async move {
            let _open = open;
            let _ = follow(responses, &printer, &[]).await;
        });
    }
    Err(Failure::BadArgs(
        "Error reading watch request line: EOF".into(),
    ))
}
