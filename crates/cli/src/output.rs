//! etcdctl's output formats. JSON mirrors Go's encoding of etcd's protobuf structs: snake_case
//! proto names, zero values omitted, 64-bit integers as numbers, bytes as base64.

use ballast_api::etcdserverpb::{
    response_op::Response, DeleteRangeResponse, PutResponse, RangeResponse, ResponseHeader,
    TxnResponse,
};
use ballast_api::mvccpb::KeyValue;
use base64::Engine;
use serde_json::{Map, Value};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    Simple,
    Json,
    Fields,
    Table,
}

pub struct Printer {
    pub format: Format,
    pub hex: bool,
}

fn b64(b: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(b))
}

fn put_num(m: &mut Map<String, Value>, k: &str, v: i64) {
    if v != 0 {
        m.insert(k.into(), v.into());
    }
}

fn put_unum(m: &mut Map<String, Value>, k: &str, v: u64) {
    if v != 0 {
        m.insert(k.into(), v.into());
    }
}

pub fn header_json(h: &Option<ResponseHeader>) -> Option<Value> {
    let h = h.as_ref()?;
    let mut m = Map::new();
    put_unum(&mut m, "cluster_id", h.cluster_id);
    put_unum(&mut m, "member_id", h.member_id);
    put_num(&mut m, "revision", h.revision);
    put_unum(&mut m, "raft_term", h.raft_term);
    Some(Value::Object(m))
}

pub fn kv_json(kv: &KeyValue) -> Value {
    let mut m = Map::new();
    if !kv.key.is_empty() {
        m.insert("key".into(), b64(&kv.key));
    }
    put_num(&mut m, "create_revision", kv.create_revision);
    put_num(&mut m, "mod_revision", kv.mod_revision);
    put_num(&mut m, "version", kv.version);
    if !kv.value.is_empty() {
        m.insert("value".into(), b64(&kv.value));
    }
    put_num(&mut m, "lease", kv.lease);
    Value::Object(m)
}

fn with_header(h: &Option<ResponseHeader>) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(h) = header_json(h) {
        m.insert("header".into(), h);
    }
    m
}

pub fn range_json(r: &RangeResponse) -> Value {
    let mut m = with_header(&r.header);
    if !r.kvs.is_empty() {
        m.insert("kvs".into(), r.kvs.iter().map(kv_json).collect());
    }
    if r.more {
        m.insert("more".into(), true.into());
    }
    put_num(&mut m, "count", r.count);
    Value::Object(m)
}

pub fn put_json(r: &PutResponse) -> Value {
    let mut m = with_header(&r.header);
    if let Some(p) = &r.prev_kv {
        m.insert("prev_kv".into(), kv_json(p));
    }
    Value::Object(m)
}

pub fn delete_json(r: &DeleteRangeResponse) -> Value {
    let mut m = with_header(&r.header);
    put_num(&mut m, "deleted", r.deleted);
    if !r.prev_kvs.is_empty() {
        m.insert("prev_kvs".into(), r.prev_kvs.iter().map(kv_json).collect());
    }
    Value::Object(m)
}

pub fn txn_json(r: &TxnResponse) -> Value {
    let mut m = with_header(&r.header);
    if r.succeeded {
        m.insert("succeeded".into(), true.into());
    }
    if !r.responses.is_empty() {
        let resps: Vec<Value> = r
            .responses
            .iter()
            .map(|op| {
                let inner = match &op.response {
                    Some(Response::ResponseRange(x)) => {
                        serde_json::json!({"response_range": range_json(x)})
                    }
                    Some(Response::ResponsePut(x)) => {
                        serde_json::json!({"response_put": put_json(x)})
                    }
                    Some(Response::ResponseDeleteRange(x)) => {
                        serde_json::json!({"response_delete_range": delete_json(x)})
                    }
                    Some(Response::ResponseTxn(x)) => {
                        serde_json::json!({"response_txn": txn_json(x)})
                    }
                    None => Value::Object(Map::new()),
                };
                serde_json::json!({ "Response": inner })
            })
            .collect();
        m.insert("responses".into(), resps.into());
    }
    Value::Object(m)
}

impl Printer {
    pub fn bytes(&self, b: &[u8]) -> String {
        if self.hex {
            b.iter().map(|x| format!("\\x{x:02x}")).collect()
        } else {
            String::from_utf8_lossy(b).into_owned()
        }
    }

    pub fn kv_simple(&self, kv: &KeyValue, value_only: bool) {
        if !value_only {
            println!("{}", self.bytes(&kv.key));
        }
        println!("{}", self.bytes(&kv.value));
    }

    pub fn header_fields(&self, h: &Option<ResponseHeader>) {
        let h = (*h).unwrap_or_default();
        if self.hex {
            println!("\"ClusterID\" : {:x}", h.cluster_id);
            println!("\"MemberID\" : {:x}", h.member_id);
        } else {
            println!("\"ClusterID\" : {}", h.cluster_id);
            println!("\"MemberID\" : {}", h.member_id);
        }
        // etcdctl 3.7 leaves out a revision the response does not carry (member list).
        if h.revision > 0 {
            println!("\"Revision\" : {}", h.revision);
        }
        println!("\"RaftTerm\" : {}", h.raft_term);
    }

    /// A key-value in `fields` format; `prefix` names it (watch prints `Prev...` fields).
    pub fn kv_fields(&self, prefix: &str, kv: &KeyValue) {
        println!("\"{prefix}Key\" : {:?}", self.bytes(&kv.key));
        println!("\"{prefix}CreateRevision\" : {}", kv.create_revision);
        println!("\"{prefix}ModRevision\" : {}", kv.mod_revision);
        println!("\"{prefix}Version\" : {}", kv.version);
        println!("\"{prefix}Value\" : {:?}", self.bytes(&kv.value));
        println!("\"{prefix}Lease\" : {}", kv.lease);
    }

    /// etcdctl's refusal of a format a command cannot print (after doing the command).
    pub fn unsupported(&self) -> crate::Failure {
        let name = match self.format {
            Format::Table => "table",
            Format::Fields => "fields",
            Format::Json => "json",
            Format::Simple => "simple",
        };
        crate::Failure::BadFeature(format!("{name} not supported as output format"))
    }

    pub fn range(&self, r: &RangeResponse, value_only: bool) {
        match self.format {
            Format::Json => println!("{}", range_json(r)),
            Format::Fields => {
                self.header_fields(&r.header);
                for kv in &r.kvs {
                    self.kv_fields("", kv);
                }
                println!("\"More\" : {}", r.more);
                println!("\"Count\" : {}", r.count);
            }
            _ => {
                for kv in &r.kvs {
                    self.kv_simple(kv, value_only);
                }
            }
        }
    }

    pub fn put(&self, r: &PutResponse) {
        match self.format {
            Format::Json => println!("{}", put_json(r)),
            Format::Fields => {
                self.header_fields(&r.header);
                if let Some(p) = &r.prev_kv {
                    self.kv_fields("", p);
                }
            }
            _ => {
                println!("OK");
                if let Some(p) = &r.prev_kv {
                    self.kv_simple(p, false);
                }
            }
        }
    }

    pub fn delete(&self, r: &DeleteRangeResponse) {
        match self.format {
            Format::Json => println!("{}", delete_json(r)),
            Format::Fields => {
                self.header_fields(&r.header);
                println!("\"Deleted\" : {}", r.deleted);
                for kv in &r.prev_kvs {
                    self.kv_fields("", kv);
                }
            }
            _ => {
                println!("{}", r.deleted);
                for kv in &r.prev_kvs {
                    self.kv_simple(kv, false);
                }
            }
        }
    }

    pub fn txn(&self, r: &TxnResponse) {
        match self.format {
            Format::Json => println!("{}", txn_json(r)),
            _ => {
                println!("{}", if r.succeeded { "SUCCESS" } else { "FAILURE" });
                for op in &r.responses {
                    println!();
                    match &op.response {
                        Some(Response::ResponseRange(x)) => self.range(x, false),
                        Some(Response::ResponsePut(x)) => self.put(x),
                        Some(Response::ResponseDeleteRange(x)) => self.delete(x),
                        Some(Response::ResponseTxn(x)) => self.txn(x),
                        None => {}
                    }
                }
            }
        }
    }
}

/// etcdctl 3.7's tables (tablewriter 1.x): box-drawing borders, centred headers,
/// right-aligned cells, nothing wrapped.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    // tablewriter 1.x trims each cell's surrounding spaces.
    let rows: Vec<Vec<&str>> = rows
        .iter()
        .map(|r| r.iter().map(|c| c.trim()).collect())
        .collect();
    let widths: Vec<usize> = header
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let rule = |left: &str, mid: &str, right: &str| {
        let cells: Vec<String> = widths.iter().map(|w| "─".repeat(w + 2)).collect();
        format!("{left}{}{right}", cells.join(mid))
    };
    let line = |cells: Vec<String>| format!("│{}│", cells.join("│"));
    println!("{}", rule("┌", "┬", "┐"));
    let hdr = header
        .iter()
        .zip(&widths)
        .map(|(h, w)| {
            let pad = w - h.chars().count();
            format!(" {}{h}{} ", " ".repeat(pad / 2), " ".repeat(pad - pad / 2))
        })
        .collect();
    println!("{}", line(hdr));
    println!("{}", rule("├", "┼", "┤"));
    for r in rows {
        let cells = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let c = r.get(i).copied().unwrap_or("");
                let pad = w - c.chars().count();
                format!(" {}{c} ", " ".repeat(pad))
            })
            .collect();
        println!("{}", line(cells));
    }
    println!("{}", rule("└", "┴", "┘"));
}
