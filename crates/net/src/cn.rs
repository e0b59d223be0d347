//! The subject common name of an X.509 certificate, read straight from its DER (enough of
//! it for `--peer-cert-allowed-cn`; no general certificate parsing).

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

/// The first common name in the certificate's subject.
pub fn subject_cn(der: &[u8]) -> Option<String> {
    let (SEQUENCE, cert, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] version is optional; then serial, signature, issuer, validity, subject.
    let (tag, _, after) = element(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, mut name, _) = element(rest)? else {
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
}
