//! etcdctl's txn input: compares, a blank line, success ops, a blank line, failure ops.

use std::io::BufRead;

use ballast_api::etcdserverpb::{compare, request_op::Request, Compare, RequestOp, TxnRequest};
use clap::Parser;

use crate::{delete_request, put_request, range_request, DelArgs, Failure, GetArgs, PutArgs};

/// Splits a line into words, honouring double quotes as etcdctl's `argify` does.
fn argify(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn parse_compare(line: &str) -> Result<Compare, Failure> {
    let bad = || invalid(format!("malformed comparison: {line}"));
    let open = line.find('(').ok_or_else(bad)?;
    let close = line.find(')').ok_or_else(bad)?;
    let target = &line[..open];
    let key = argify(&line[open + 1..close]).pop().ok_or_else(bad)?;
    let rest = argify(&line[close + 1..]);
    let [op, val] = rest.as_slice() else {
        return Err(bad());
    };
    let result = match op.as_str() {
        "=" | "==" => compare::CompareResult::Equal,
        "!=" => compare::CompareResult::NotEqual,
        "<" => compare::CompareResult::Less,
        ">" => compare::CompareResult::Greater,
        _ => return Err(invalid(format!("Invalid operator {op:?}"))),
    };
    let num = || {
        val.parse::<i64>()
            .map_err(|_| invalid(format!("invalid txn compare request: {line}")))
    };
    let (t, u) = match target.trim() {
        "ver" | "version" => (
            compare::CompareTarget::Version,
            compare::TargetUnion::Version(num()?),
        ),
        "c" | "create" => (
            compare::CompareTarget::Create,
            compare::TargetUnion::CreateRevision(num()?),
        ),
        "m" | "mod" => (
            compare::CompareTarget::Mod,
            compare::TargetUnion::ModRevision(num()?),
        ),
        "val" | "value" => (
            compare::CompareTarget::Value,
            compare::TargetUnion::Value(val.clone().into_bytes()),
        ),
        "lease" => (
            compare::CompareTarget::Lease,
            compare::TargetUnion::Lease(i64::from_str_radix(val, 16).map_err(|_| bad())?),
        ),
        other => {
            return Err(invalid(format!(
                "malformed comparison: {line} (unknown target {other})"
            )))
        }
    };
    Ok(Compare {
        result: result as i32,
        target: t as i32,
        key: key.into_bytes(),
        target_union: Some(u),
        range_end: vec![],
    })
}

#[derive(Parser)]
#[command(no_binary_name = true)]
enum OpLine {
    Get(GetArgs),
    Put(PutArgs),
    Del(DelArgs),
}

/// etcdctl's exit code for txn input it cannot read (cobrautl.ExitInvalidInput).
const EXIT_INVALID_INPUT: u8 = 3;

fn invalid(msg: String) -> Failure {
    Failure::Exit(EXIT_INVALID_INPUT, msg)
}

fn parse_op(line: &str) -> Result<RequestOp, Failure> {
    let words = argify(line);
    if words.len() < 2 {
        return Err(invalid(format!("invalid txn compare request: {line}")));
    }
    let op = OpLine::try_parse_from(&words).map_err(|e| {
        // A flag error shows the op's usage (etcdctl parses each line with a bare cobra tree).
        use clap::error::ErrorKind;
        if !matches!(e.kind(), ErrorKind::InvalidSubcommand) {
            let root = crate::usage::go_flags(<crate::Cli as clap::CommandFactory>::command());
            if let Some(sub) = root.find_subcommand(&words[0]) {
                eprintln!("{}", crate::usage::usage(&root, &[&root, sub], ""));
            }
        }
        invalid(format!("invalid txn request: {line}"))
    })?;
    let request = match op {
        OpLine::Get(a) => Request::RequestRange(range_request(&a)?),
        OpLine::Put(a) => Request::RequestPut(put_request(&a, || None)?),
        OpLine::Del(a) => Request::RequestDeleteRange(delete_request(&a)?),
    };
    Ok(RequestOp {
        request: Some(request),
    })
}

pub fn read_txn(interactive: bool) -> Result<TxnRequest, Failure> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut section = |prompt: &str| -> Result<Vec<String>, Failure> {
        if interactive {
            println!("{prompt}");
        }
        let mut out = Vec::new();
        loop {
            match lines.next() {
                None => return Err(invalid("EOF".into())),
                Some(Err(e)) => return Err(invalid(e.to_string())),
                Some(Ok(l)) if l.trim().is_empty() => return Ok(out),
                Some(Ok(l)) => out.push(l),
            }
        }
    };
    let compares = section("compares:")?;
    let success = section("success requests (get, put, del):")?;
    let failure = section("failure requests (get, put, del):")?;
    Ok(TxnRequest {
        compare: compares
            .iter()
            .map(|l| parse_compare(l))
            .collect::<Result<_, _>>()?,
        success: success
            .iter()
            .map(|l| parse_op(l))
            .collect::<Result<_, _>>()?,
        failure: failure
            .iter()
            .map(|l| parse_op(l))
            .collect::<Result<_, _>>()?,
    })
}
