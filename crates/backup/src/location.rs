//! `--backup-url`: `file:///path` or `s3://bucket/prefix`, and how the S3 endpoint is reached
//! (the AWS CLI's environment variables unless a flag says otherwise).

use std::path::PathBuf;

use crate::{BackupStoreError, Result};

/// Where backups go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Dir(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// Parses `file:///abs/path` or `s3://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<Location> {
        let bad = |why| BackupStoreError::Url {
            url: url.to_string(),
            why,
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("a file URL needs an absolute path (file:///...)"));
            }
            return Ok(Location::Dir(PathBuf::from(path)));
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(bad("the scheme must be s3:// or file://"));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if !valid_bucket(bucket) {
            return Err(bad(
                "bucket names are 3-63 lowercase letters, digits, dots and hyphens",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..")
            || prefix.contains("//")
            || prefix.chars().any(char::is_control)
        {
            return Err(bad("the prefix must be a plain path"));
        }
        Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Dir(p) => write!(f, "file://{}", p.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

/// Path-style (`endpoint/bucket/key`) or virtual-hosted (`bucket.endpoint/key`) requests; the
/// AWS CLI's `addressing_style`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// Path style with a custom endpoint (MinIO, Ceph RGW), virtual-hosted on AWS.
    Auto,
    Path,
    Virtual,
}

impl std::str::FromStr for Addressing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Addressing::Auto),
            "path" => Ok(Addressing::Path),
            "virtual" => Ok(Addressing::Virtual),
            _ => Err(format!("{s:?}: expected auto, path or virtual")),
        }
    }
}

/// How to reach an S3-compatible endpoint. Credentials are never here: they come from the
/// standard chain (environment, AWS config and credentials files, web identity, instance
/// metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: String,
    pub addressing: Addressing,
    /// Extra trusted CA certificates (PEM) for the endpoint's TLS.
    pub ca_file: Option<PathBuf>,
    /// Where web identity (IRSA) credentials are asked for instead of AWS STS, as AWS SDKs
    /// take it: an S3-compatible store's own STS (MinIO's, Ceph RGW's), or a VPC endpoint.
    pub sts_endpoint: Option<String>,
}

impl S3Settings {
    /// The AWS CLI's variables: `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, `AWS_REGION` or
    /// `AWS_DEFAULT_REGION` (else us-east-1), `AWS_CA_BUNDLE`, and for STS
    /// `AWS_ENDPOINT_URL_STS` or `AWS_ENDPOINT_URL`.
    pub fn from_env() -> S3Settings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        S3Settings {
            endpoint: var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")),
            region: var("AWS_REGION")
                .or_else(|| var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            addressing: Addressing::Auto,
            ca_file: var("AWS_CA_BUNDLE").map(PathBuf::from),
            sts_endpoint: var("AWS_ENDPOINT_URL_STS").or_else(|| var("AWS_ENDPOINT_URL")),
        }
    }

    pub fn path_style(&self) -> bool {
        match self.addressing {
            Addressing::Auto => self.endpoint.is_some(),
            Addressing::Path => true,
            Addressing::Virtual => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_to_a_directory_or_a_bucket_and_prefix() {
        assert_eq!(
            Location::parse("file:///var/backups/ballast").ok(),
            Some(Location::Dir("/var/backups/ballast".into()))
        );
        assert_eq!(
            Location::parse("s3://my-bucket/clusters/prod/").ok(),
            Some(Location::S3 {
                bucket: "my-bucket".into(),
                prefix: "clusters/prod".into()
            })
        );
        let bare = Location::parse("s3://my-bucket").ok();
        assert_eq!(
            bare,
            Some(Location::S3 {
                bucket: "my-bucket".into(),
                prefix: String::new()
            })
        );
        assert_eq!(
            bare.map(|l| l.to_string()).as_deref(),
            Some("s3://my-bucket")
        );
        for bad in [
            "",
            "/var/backups",
            "file://relative",
            "http://x/y",
            "s3://",
            "s3://ab",
            "s3://Upper/x",
            "s3://-bucket/x",
            "s3://bucket/../x",
            "s3://bucket/a//b",
            "s3://bucket/a\nb",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_custom_endpoint_means_path_style_unless_told() {
        let mut s = S3Settings {
            endpoint: None,
            region: "us-east-1".into(),
            addressing: Addressing::Auto,
            ca_file: None,
            sts_endpoint: None,
        };
        assert!(!s.path_style());
        s.endpoint = Some("http://127.0.0.1:9000".into());
        assert!(s.path_style());
        s.addressing = Addressing::Virtual;
        assert!(!s.path_style());
        assert_eq!("path".parse::<Addressing>(), Ok(Addressing::Path));
        assert!("sideways".parse::<Addressing>().is_err());
    }
}
