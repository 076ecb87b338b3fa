//! Who a caller is and what it may do: access levels, and the certificates that carry them
//! (`ringkv cert`). TLS on the listeners and the checks on each RPC build on these.

pub mod access;
pub mod certs;

pub use access::Access;
pub use certs::Principal;
