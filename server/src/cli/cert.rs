//! `ringkv cert ...`: creates the cluster's certificates (`security::certs`) and prints the
//! files it wrote.

use std::process::ExitCode;

use super::args::{CertCommand, CertsArgs};
use crate::security::{Access, certs};

pub(super) fn run(command: CertCommand) -> anyhow::Result<ExitCode> {
    let written = match command {
        CertCommand::Ca {
            certs:
                CertsArgs {
                    certs_dir,
                    ca_key,
                    overwrite,
                },
            lifetime_days,
        } => certs::create_ca(&certs_dir, &ca_key, lifetime_days, overwrite)?,
        CertCommand::Node {
            certs:
                CertsArgs {
                    certs_dir,
                    ca_key,
                    overwrite,
                },
            hosts,
            lifetime_days,
        } => certs::create_node(&certs_dir, &ca_key, &hosts, lifetime_days, overwrite)?,
        CertCommand::Client {
            certs:
                CertsArgs {
                    certs_dir,
                    ca_key,
                    overwrite,
                },
            name,
            access,
            lifetime_days,
        } => {
            let access: Access = access.parse().map_err(anyhow::Error::msg)?;
            certs::create_client(&certs_dir, &ca_key, &name, access, lifetime_days, overwrite)?
        }
    };
    for file in written {
        println!("wrote {}", file.display());
    }
    Ok(ExitCode::SUCCESS)
}
