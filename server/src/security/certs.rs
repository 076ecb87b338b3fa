//! A cluster's certificates, made the way `cockroach cert` makes them (`ringkv cert ...`):
//! - the cluster's CA: `ca.crt` in the certs directory, its key kept apart (`--ca-key`). It may
//!   sign leaf certificates only.
//! - a node certificate, `node.crt` and `node.key`: for server and client use, with access
//!   `node`. It names `NODE_SERVER_NAME`, which every node presents and peers check (an
//!   address may change; the name does not), and the hosts it was made for.
//! - client certificates, `client.NAME.crt` and `client.NAME.key`: for client use only, with the
//!   caller's name as the subject's common name and access `readonly`, `readwrite` or `admin`.
//!
//! A leaf carries its access level as the URI `ringkv://access/LEVEL` among its subject
//! alternative names (what the nodes read, `Principal::from_cert_der`) and as its organizational
//! unit (for people reading it with `openssl x509 -text`). Keys are ECDSA P-256, written readable
//! by their owner only. Nothing is overwritten unless asked.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::Access;

/// The CA certificate's file in a certs directory.
pub const CA_CERT: &str = "ca.crt";
/// The node certificate's files in a certs directory.
pub const NODE_CERT: &str = "node.crt";
pub const NODE_KEY: &str = "node.key";
/// The DNS name every node certificate carries and every node checks its peers by.
pub const NODE_SERVER_NAME: &str = "node.ringkv";
/// How a certificate names its access level.
const ACCESS_URI_PREFIX: &str = "ringkv://access/";
/// How far back a new certificate's validity starts, for clocks a little behind.
const BACKDATE: Duration = Duration::hours(1);

/// The files of the client certificate for `name`: certificate, key.
pub fn client_files(certs_dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        certs_dir.join(format!("client.{name}.crt")),
        certs_dir.join(format!("client.{name}.key")),
    )
}

/// Creates the cluster's CA: `ca.crt` in `certs_dir` and its key at `ca_key`, valid for `days`.
/// Returns the files written.
pub fn create_ca(
    certs_dir: &Path,
    ca_key: &Path,
    days: u32,
    overwrite: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let ca_cert = certs_dir.join(CA_CERT);
    refuse_existing(&[&ca_cert, ca_key], overwrite)?;
    let key = KeyPair::generate().context("cannot generate the CA's key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "ringkv");
    params.distinguished_name.push(DnType::CommonName, "ringkv CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(days));
    let cert = params
        .self_signed(&key)
        .context("cannot sign the CA's certificate")?;
    create_dir(certs_dir)?;
    write_file(ca_key, &key.serialize_pem(), 0o600, overwrite)?;
    write_file(&ca_cert, &cert.pem(), 0o644, overwrite)?;
    Ok(vec![ca_cert, ca_key.to_path_buf()])
}

/// Creates the node certificate in `certs_dir` for `hosts` (names and IP addresses the node is
/// reached at), signed by the CA in `certs_dir` with the key at `ca_key`.
pub fn create_node(
    certs_dir: &Path,
    ca_key: &Path,
    hosts: &[String],
    days: u32,
    overwrite: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    if hosts.is_empty() {
        bail!("name at least one host (DNS name or IP address) the node is reached at");
    }
    let (cert, key) = (certs_dir.join(NODE_CERT), certs_dir.join(NODE_KEY));
    let mut names = hosts.to_vec();
    names.push(NODE_SERVER_NAME.to_owned());
    create_leaf(
        certs_dir,
        ca_key,
        "node",
        Access::Node,
        names,
        days,
        (&cert, &key),
        overwrite,
    )
}

/// Creates the client certificate of `name` with `access` in `certs_dir`, signed by the CA there
/// with the key at `ca_key`.
pub fn create_client(
    certs_dir: &Path,
    ca_key: &Path,
    name: &str,
    access: Access,
    days: u32,
    overwrite: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    check_name(name)?;
    if access == Access::Node {
        bail!("access `node` is for node certificates only (`ringkv cert create-node`)");
    }
    let (cert, key) = client_files(certs_dir, name);
    create_leaf(
        certs_dir,
        ca_key,
        name,
        access,
        Vec::new(),
        days,
        (&cert, &key),
        overwrite,
    )
}

/// Signs a leaf certificate for `name` with `access` and the DNS/IP `sans`, and writes it and its
/// key to `files`.
#[allow(clippy::too_many_arguments)]
fn create_leaf(
    certs_dir: &Path,
    ca_key: &Path,
    name: &str,
    access: Access,
    sans: Vec<String>,
    days: u32,
    (cert_file, key_file): (&Path, &Path),
    overwrite: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    refuse_existing(&[cert_file, key_file], overwrite)?;
    let ca_cert_file = certs_dir.join(CA_CERT);
    let ca_pem = std::fs::read_to_string(&ca_cert_file).with_context(|| {
        format!(
            "cannot read the CA certificate {}; create it first with `ringkv cert create-ca`",
            ca_cert_file.display()
        )
    })?;
    let ca_key_pem = std::fs::read_to_string(ca_key)
        .with_context(|| format!("cannot read the CA key {}", ca_key.display()))?;
    let ca_signing_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("{} is not a private key in PEM", ca_key.display()))?;
    let ca_expires = ca_not_after(&ca_pem)
        .with_context(|| format!("{} is not a certificate in PEM", ca_cert_file.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_signing_key).with_context(|| {
        format!(
            "cannot sign with the CA of {} and the key {}: do they belong together?",
            ca_cert_file.display(),
            ca_key.display()
        )
    })?;

    let now = OffsetDateTime::now_utc();
    let not_after = now + Duration::days(i64::from(days));
    if not_after > ca_expires {
        bail!(
            "a certificate valid for {days} days would outlive the CA, which expires on {}; ask for \
             fewer days, or create a new CA",
            ca_expires.date()
        );
    }
    let mut params =
        CertificateParams::new(sans).context("a host is neither a DNS name nor an IP address")?;
    let uri = format!("{ACCESS_URI_PREFIX}{access}");
    params
        .subject_alt_names
        .push(SanType::URI(uri.as_str().try_into()?));
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "ringkv");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, access.as_str());
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = if access == Access::Node {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    let key = KeyPair::generate().context("cannot generate a key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign the certificate")?;
    write_file(key_file, &key.serialize_pem(), 0o600, overwrite)?;
    write_file(cert_file, &cert.pem(), 0o644, overwrite)?;
    Ok(vec![cert_file.to_path_buf(), key_file.to_path_buf()])
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The subject's common name: a client's name, or `node`.
    pub name: String,
    pub access: Access,
}

impl Principal {
    /// Reads the name and access level from a certificate (DER), as `create_*` wrote them.
    pub fn from_cert_der(der: &[u8]) -> Result<Principal, String> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|error| format!("not an X.509 certificate: {error}"))?;
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or("the certificate's subject has no common name")?
            .to_owned();
        let names = cert
            .subject_alternative_name()
            .map_err(|error| format!("the certificate's alternative names are malformed: {error}"))?
            .ok_or("the certificate names no access level (it has no alternative names)")?;
        let mut access = None;
        for general in &names.value.general_names {
            if let GeneralName::URI(uri) = general
                && let Some(level) = uri.strip_prefix(ACCESS_URI_PREFIX)
                && access.replace(level.parse::<Access>()?).is_some()
            {
                return Err("the certificate names more than one access level".into());
            }
        }
        let access = access
            .ok_or_else(|| format!("the certificate names no access level ({ACCESS_URI_PREFIX}...)"))?;
        Ok(Principal { name, access })
    }
}

/// When the CA certificate in `pem` expires.
fn ca_not_after(pem: &str) -> anyhow::Result<OffsetDateTime> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())?;
    let cert = pem.parse_x509()?;
    Ok(cert.validity().not_after.to_datetime())
}

/// A client's name: what its requests are logged and checked under.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name != "node";
    if !valid {
        bail!("client name {name:?} is not valid: 1 to 64 letters, digits, '.', '_' or '-', and not `node`");
    }
    Ok(())
}

fn refuse_existing(files: &[&Path], overwrite: bool) -> anyhow::Result<()> {
    if overwrite {
        return Ok(());
    }
    if let Some(existing) = files.iter().find(|file| file.exists()) {
        bail!(
            "{} exists already; pass --overwrite to replace it (and everything signed with it, if it is the CA)",
            existing.display()
        );
    }
    Ok(())
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the directory {}", dir.display()))
}

/// Writes `contents` to `path` with permissions `mode` (durable on return).
fn write_file(path: &Path, contents: &str, mode: u32, overwrite: bool) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        create_dir(parent)?;
    }
    let mut options = OpenOptions::new();
    options.write(true).mode(mode);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // An overwritten file keeps its old permissions unless they are set again.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents.as_bytes()))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests;
