//! The few X.509 fields the server reads from certificates: the subject of a
//! client certificate (its CN is the user, its Os the groups, as in
//! kube-apiserver) and, for a CA supplied by the user, the subject that the
//! leaves it issues must name and the public key its key file must match.
//!
//! rustls has already verified the certificates this module sees (client
//! certificates chain to the CA) or they come from the data dir, so it only
//! extracts fields. DER is read with `yasna`, which rcgen already builds in,
//! rather than a full X.509 crate.

use rcgen::string::{BmpString, Ia5String, PrintableString, TeletexString, UniversalString};
use rcgen::{DistinguishedName, DnType, DnValue};
use yasna::Tag;
use yasna::models::TaggedDerValue;
use yasna::tags::{
    TAG_BMPSTRING, TAG_IA5STRING, TAG_PRINTABLESTRING, TAG_TELETEXSTRING, TAG_UNIVERSALSTRING,
    TAG_UTF8STRING,
};

/// `id-at-commonName`.
const OID_CN: &[u64] = &[2, 5, 4, 3];
/// `id-at-organizationName`.
const OID_O: &[u64] = &[2, 5, 4, 10];

/// A certificate that is not the DER this module reads.
#[derive(Debug, thiserror::Error)]
#[error("certificate: {0}")]
pub struct ParseError(String);

impl From<yasna::ASN1Error> for ParseError {
    fn from(e: yasna::ASN1Error) -> Self {
        ParseError(e.to_string())
    }
}

/// One attribute of a distinguished name, as encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// The attribute type (`2.5.4.3` is CN).
    pub oid: Vec<u64>,
    /// The string type it is encoded as, and its content bytes.
    pub value: TaggedDerValue,
}

impl Attribute {
    /// The value as text, for the string types names use.
    pub fn text(&self) -> Option<String> {
        let bytes = self.value.value();
        let tag = self.value.tag();
        if tag == TAG_UTF8STRING || tag == TAG_PRINTABLESTRING || tag == TAG_IA5STRING {
            String::from_utf8(bytes.to_vec()).ok()
        } else if tag == TAG_TELETEXSTRING {
            // Read as Latin-1, as Go's crypto/x509 does.
            Some(bytes.iter().map(|&b| char::from(b)).collect())
        } else if tag == TAG_BMPSTRING {
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        } else {
            None
        }
    }
}

/// The fields read from one certificate.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// The issuer name, raw DER (compared byte for byte when chains are built).
    pub issuer: Vec<u8>,
    /// The subject name, raw DER.
    pub subject: Vec<u8>,
    /// The subject's attributes in order.
    pub subject_attributes: Vec<Attribute>,
    /// The subjectPublicKeyInfo, raw DER.
    pub public_key_info: Vec<u8>,
}

impl Certificate {
    /// Reads a DER certificate.
    pub fn parse(der: &[u8]) -> Result<Certificate, ParseError> {
        let (issuer, subject, public_key_info) = yasna::parse_der(der, |r| {
            r.read_sequence(|r| {
                let tbs = r.next().read_sequence(|r| {
                    // version [0] EXPLICIT, optional
                    r.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_i64()))?;
                    r.next().read_der()?; // serialNumber
                    r.next().read_der()?; // signature
                    let issuer = r.next().read_der()?;
                    r.next().read_der()?; // validity
                    let subject = r.next().read_der()?;
                    let public_key_info = r.next().read_der()?;
                    // issuerUniqueID [1], subjectUniqueID [2], extensions [3]
                    while r.read_optional(|r| r.read_der())?.is_some() {}
                    Ok((issuer, subject, public_key_info))
                })?;
                r.next().read_der()?; // signatureAlgorithm
                r.next().read_der()?; // signatureValue
                Ok(tbs)
            })
        })?;
        Ok(Certificate {
            subject_attributes: name_attributes(&subject)?,
            issuer,
            subject,
            public_key_info,
        })
    }

    /// Values of the subject attribute `oid`, in order.
    fn subject_values<'a>(&'a self, oid: &'a [u64]) -> impl Iterator<Item = String> + 'a {
        self.subject_attributes
            .iter()
            .filter(move |a| a.oid == oid)
            .filter_map(Attribute::text)
    }

    /// The subject's common name (the first, if several).
    pub fn common_name(&self) -> Option<String> {
        self.subject_values(OID_CN).next()
    }

    /// The subject's organizations, in order.
    pub fn organizations(&self) -> Vec<String> {
        self.subject_values(OID_O).collect()
    }

    /// The subject as an rcgen name, each value in its original string type,
    /// so that certificates issued under it name it byte for byte (checked
    /// by the caller, since rcgen keeps one value per attribute type).
    pub fn subject_name(&self) -> Result<DistinguishedName, ParseError> {
        let mut dn = DistinguishedName::new();
        for attr in &self.subject_attributes {
            let bytes = attr.value.value().to_vec();
            let bad = |what: &str| ParseError(format!("subject attribute {:?}: {what}", attr.oid));
            let text = || String::from_utf8(bytes.clone()).map_err(|_| bad("not UTF-8"));
            let tag = attr.value.tag();
            let value = if tag == TAG_UTF8STRING {
                DnValue::Utf8String(text()?)
            } else if tag == TAG_PRINTABLESTRING {
                DnValue::PrintableString(
                    PrintableString::try_from(text()?).map_err(|_| bad("not printable"))?,
                )
            } else if tag == TAG_IA5STRING {
                DnValue::Ia5String(Ia5String::try_from(text()?).map_err(|_| bad("not IA5"))?)
            } else if tag == TAG_TELETEXSTRING {
                DnValue::TeletexString(
                    TeletexString::try_from(text()?).map_err(|_| bad("not T.61"))?,
                )
            } else if tag == TAG_BMPSTRING {
                DnValue::BmpString(BmpString::from_utf16be(bytes).map_err(|_| bad("not UCS-2"))?)
            } else if tag == TAG_UNIVERSALSTRING {
                DnValue::UniversalString(
                    UniversalString::from_utf32be(bytes).map_err(|_| bad("not UCS-4"))?,
                )
            } else {
                return Err(bad("unsupported string type"));
            };
            dn.push(DnType::from_oid(&attr.oid), value);
        }
        Ok(dn)
    }
}

/// The attributes of a DER `Name`, flattened in order.
fn name_attributes(name: &[u8]) -> Result<Vec<Attribute>, ParseError> {
    let rdns = yasna::parse_ber(name, |r| {
        r.collect_sequence_of(|r| {
            r.collect_set_of(|r| {
                r.read_sequence(|r| {
                    let oid = r.next().read_oid()?.components().clone();
                    let value = r.next().read_tagged_der()?;
                    Ok(Attribute { oid, value })
                })
            })
        })
    })?;
    Ok(rdns.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    #[test]
    fn reads_subject_and_public_key() {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "jane");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "dev");
        params.distinguished_name.push(
            DnType::CountryName,
            DnValue::PrintableString(PrintableString::try_from("FR").expect("printable")),
        );
        let cert = params.self_signed(&key).expect("sign");
        let parsed = Certificate::parse(cert.der()).expect("parse");
        assert_eq!(parsed.common_name().as_deref(), Some("jane"));
        assert_eq!(parsed.organizations(), vec!["dev".to_owned()]);
        assert_eq!(parsed.issuer, parsed.subject);
        assert_eq!(
            parsed.public_key_info,
            rcgen::PublicKeyData::subject_public_key_info(&key)
        );
        assert_eq!(
            parsed.subject_name().expect("name"),
            params.distinguished_name
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Certificate::parse(b"not a certificate").is_err());
        assert!(Certificate::parse(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
    }
}
