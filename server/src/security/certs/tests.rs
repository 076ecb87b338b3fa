use std::os::unix::fs::PermissionsExt;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::*;

/// The DER of the first certificate in the PEM file `path`.
fn der_of(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).expect("read the certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
    pem.contents
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn a_ca_signs_node_and_client_certificates_that_carry_their_access() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (certs, ca_key) = (dir.path().join("certs"), dir.path().join("safe/ca.key"));
    create_ca(&certs, &ca_key, 3650, false).expect("create the CA");
    create_node(
        &certs,
        &ca_key,
        &["127.0.0.1".into(), "db1.example".into()],
        365,
        false,
    )
    .expect("node");
    create_client(&certs, &ca_key, "app", Access::ReadWrite, 365, false).expect("client");

    // Keys are readable by their owner only.
    assert_eq!(mode_of(&ca_key), 0o600);
    assert_eq!(mode_of(&certs.join(NODE_KEY)), 0o600);
    assert_eq!(mode_of(&client_files(&certs, "app").1), 0o600);

    // The CA may sign leaves only; both leaves are signed by it.
    let ca_der = der_of(&certs.join(CA_CERT));
    let (_, ca) = X509Certificate::from_der(&ca_der).expect("CA");
    let constraints = ca.basic_constraints().expect("parse").expect("present").value;
    assert!(constraints.ca && constraints.path_len_constraint == Some(0));
    let node_der = der_of(&certs.join(NODE_CERT));
    let client_der = der_of(&client_files(&certs, "app").0);
    for der in [&node_der, &client_der] {
        let (_, leaf) = X509Certificate::from_der(der).expect("leaf");
        leaf.verify_signature(Some(ca.public_key()))
            .expect("signed by the CA");
        assert!(!leaf.is_ca());
    }

    // Who each certificate says its holder is.
    assert_eq!(
        Principal::from_cert_der(&node_der),
        Ok(Principal {
            name: "node".into(),
            access: Access::Node
        })
    );
    assert_eq!(
        Principal::from_cert_der(&client_der),
        Ok(Principal {
            name: "app".into(),
            access: Access::ReadWrite
        })
    );

    // The node certificate names its hosts and the name peers check; it serves and calls.
    let (_, node) = X509Certificate::from_der(&node_der).expect("node");
    let names = node
        .subject_alternative_name()
        .expect("parse")
        .expect("present")
        .value;
    assert!(
        names
            .general_names
            .contains(&GeneralName::DNSName(NODE_SERVER_NAME))
    );
    assert!(names.general_names.contains(&GeneralName::DNSName("db1.example")));
    assert!(
        names
            .general_names
            .contains(&GeneralName::IPAddress(&[127, 0, 0, 1]))
    );
    let usage = node.extended_key_usage().expect("parse").expect("present").value;
    assert!(usage.server_auth && usage.client_auth);
    // A client certificate cannot serve as a node.
    let (_, client) = X509Certificate::from_der(&client_der).expect("client");
    let usage = client
        .extended_key_usage()
        .expect("parse")
        .expect("present")
        .value;
    assert!(usage.client_auth && !usage.server_auth);
}

#[test]
fn nothing_is_overwritten_unless_asked_and_bad_requests_say_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (certs, ca_key) = (dir.path().join("certs"), dir.path().join("ca.key"));

    let no_ca = create_client(&certs, &ca_key, "app", Access::ReadOnly, 30, false).unwrap_err();
    assert!(
        format!("{no_ca:#}").contains("ringkv cert create-ca"),
        "{no_ca:#}"
    );

    create_ca(&certs, &ca_key, 365, false).expect("create the CA");
    let before = std::fs::read(certs.join(CA_CERT)).expect("read");
    let again = create_ca(&certs, &ca_key, 365, false).unwrap_err();
    assert!(format!("{again:#}").contains("--overwrite"), "{again:#}");
    assert_eq!(std::fs::read(certs.join(CA_CERT)).expect("read"), before);

    let outlives = create_client(&certs, &ca_key, "app", Access::ReadOnly, 400, false).unwrap_err();
    assert!(format!("{outlives:#}").contains("outlive the CA"), "{outlives:#}");
    let node_access = create_client(&certs, &ca_key, "app", Access::Node, 30, false).unwrap_err();
    assert!(
        format!("{node_access:#}").contains("node certificates only"),
        "{node_access:#}"
    );
    let bad_name = create_client(&certs, &ca_key, "../app", Access::ReadOnly, 30, false).unwrap_err();
    assert!(format!("{bad_name:#}").contains("not valid"), "{bad_name:#}");
    let no_host = create_node(&certs, &ca_key, &[], 30, false).unwrap_err();
    assert!(
        format!("{no_host:#}").contains("at least one host"),
        "{no_host:#}"
    );
    // None of the refusals wrote anything.
    let mut files: Vec<String> = std::fs::read_dir(&certs)
        .expect("list")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, vec![CA_CERT.to_string()]);

    // With --overwrite the CA is replaced, and its key stays private.
    create_ca(&certs, &ca_key, 365, true).expect("overwrite the CA");
    assert_ne!(std::fs::read(certs.join(CA_CERT)).expect("read"), before);
    assert_eq!(mode_of(&ca_key), 0o600);
}

#[test]
fn a_certificate_without_an_access_level_names_none() {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["example".to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, "someone");
    let cert = params.self_signed(&key).expect("sign");
    let refused = Principal::from_cert_der(cert.der()).unwrap_err();
    assert!(refused.contains("no access level"), "{refused}");
}
