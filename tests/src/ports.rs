//! Free TCP ports on 127.0.0.1 for test nodes. Ports are handed out once per process, so parallel
//! tests in one binary never pick the same port; binding checks the OS has it free too.

use std::net::TcpListener;
use std::sync::Mutex;

/// Returns `n` distinct ports that were free when checked.
pub fn free_ports(n: usize) -> Vec<u16> {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().expect("ports lock");
    let mut ports = Vec::with_capacity(n);
    // Bounded: the OS hands out ephemeral ports; a few hundred tries is plenty for a test run.
    for _ in 0..1000 {
        if ports.len() == n {
            break;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if !given.contains(&port) {
            given.push(port);
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), n, "could not find {n} free ports");
    ports
}
