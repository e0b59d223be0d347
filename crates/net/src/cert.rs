//! The two facts Ballast reads from an X.509 certificate itself, straight from its DER: the
//! subject common name (`--peer-cert-allowed-cn`, the user under `--client-cert-auth`) and the
//! validity period (a trusted CA presented as its own leaf). Chains, signatures and names are
//! rustls-webpki's job.

/// One DER element at the start of `b`: (tag, contents, rest).
fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let (lenb, rest) = b.split_at(n);
        b = rest;
        lenb.iter().fold(0usize, |a, x| (a << 8) | usize::from(*x))
    };
    if b.len() < len {
        return None;
    }
    let (contents, rest) = b.split_at(len);
    Some((tag, contents, rest))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

/// The TBSCertificate's fields from `serial` on: [0] version is optional; then serial,
/// signature, issuer, validity, subject.
fn tbs_from_serial(der: &[u8]) -> Option<&[u8]> {
    let (SEQUENCE, cert, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let (tag, _, after) = element(tbs)?;
    Some(if tag == 0xa0 { after } else { tbs })
}

/// The n-th field (0 = serial) of the TBSCertificate.
fn tbs_field(der: &[u8], n: usize) -> Option<(u8, &[u8])> {
    let mut rest = tbs_from_serial(der)?;
    for _ in 0..n {
        rest = element(rest)?.2;
    }
    let (tag, contents, _) = element(rest)?;
    Some((tag, contents))
}

const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// Seconds since the Unix epoch of an X.509 time (UTCTime `YYMMDDHHMMSSZ`, years 1950-2049, or
/// GeneralizedTime `YYYYMMDDHHMMSSZ`).
fn x509_time(tag: u8, s: &[u8]) -> Option<i64> {
    let digits = |b: &[u8]| -> Option<i64> {
        b.iter().try_fold(0i64, |a, c| {
            c.is_ascii_digit().then(|| a * 10 + i64::from(c - b'0'))
        })
    };
    let (year, rest) = match (tag, s.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(&s[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
        }
        (GENERALIZED_TIME, 15) => (digits(&s[..4])?, &s[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let f = |i: usize| digits(&rest[i..i + 2]);
    let (month, day, h, m, sec) = (f(0)?, f(2)?, f(4)?, f(6)?, f(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(crate::time::unix_of_civil(year, month, day, h, m, sec))
}

/// The certificate's validity period, `notBefore` and `notAfter`, as Unix seconds.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (SEQUENCE, v) = tbs_field(der, 3)? else {
        return None;
    };
    let (t1, not_before, rest) = element(v)?;
    let (t2, not_after, _) = element(rest)?;
    Some((x509_time(t1, not_before)?, x509_time(t2, not_after)?))
}

/// The first common name in the certificate's subject.
pub fn subject_cn(der: &[u8]) -> Option<String> {
    let (SEQUENCE, mut name) = tbs_field(der, 4)? else {
        return None;
    };
    while !name.is_empty() {
        let (tag, rdn, next) = element(name)?;
        name = next;
        if tag != SET {
            continue;
        }
        let mut atvs = rdn;
        while !atvs.is_empty() {
            let (tag, atv, next) = element(atvs)?;
            atvs = next;
            if tag != SEQUENCE {
                continue;
            }
            let (0x06, oid, value) = element(atv)? else {
                continue;
            };
            if oid == OID_CN {
                let (_, s, _) = element(value)?;
                return String::from_utf8(s.to_vec()).ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_subject_common_name() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).expect("params");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "ballast");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "member-1");
        let cert = p.self_signed(&key).expect("cert");
        assert_eq!(super::subject_cn(cert.der()).as_deref(), Some("member-1"));
        assert_eq!(super::subject_cn(&cert.der()[..40]), None);
        assert_eq!(super::subject_cn(b"junk"), None);
    }

    #[test]
    fn reads_the_validity_period() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec!["x".into()]).expect("params");
        // 2026-12-06T00:00:00Z (UTCTime) to 2051-01-01T00:00:00Z (GeneralizedTime).
        p.not_before = rcgen::date_time_ymd(2026, 12, 6);
        p.not_after = rcgen::date_time_ymd(2051, 1, 1);
        let cert = p.self_signed(&key).expect("cert");
        assert_eq!(
            super::validity(cert.der()),
            Some((1_796_515_200, 2_556_144_000))
        );
        assert_eq!(super::validity(&cert.der()[..60]), None);
        assert_eq!(
            super::x509_time(super::UTC_TIME, b"491231235959Z"),
            Some(2_524_607_999)
        );
        assert_eq!(
            super::x509_time(super::UTC_TIME, b"500101000000Z"),
            Some(-631_152_000)
        );
        assert_eq!(super::x509_time(super::UTC_TIME, b"5001010000000"), None);
    }
}
