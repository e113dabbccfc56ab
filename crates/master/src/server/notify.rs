//! systemd's readiness notification, so that the packaged unit can be
//! `Type=notify`: `systemctl start halite-master` returns once the master
//! serves, and units ordered after it start against a listening master. The
//! protocol is one datagram (`READY=1`) to the socket in $NOTIFY_SOCKET; a
//! crate for it is not worth it.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// Tells systemd the master serves, when it runs under systemd (else does
/// nothing). A failure is logged, not fatal: the master serves either way.
pub fn ready() {
    let socket = std::env::var_os("NOTIFY_SOCKET");
    if let Err(error) = send(socket.as_deref(), "READY=1\nSTATUS=Serving agents.") {
        tracing::warn!(%error, "Cannot tell systemd the master is ready (NOTIFY_SOCKET).");
    }
}

/// Sends `message` to `socket`: a path, or an abstract name written `@name`.
/// `Ok(false)` when there is no socket to tell.
fn send(socket: Option<&OsStr>, message: &str) -> io::Result<bool> {
    let Some(socket) = socket.filter(|s| !s.is_empty()) else {
        return Ok(false);
    };
    let datagram = UnixDatagram::unbound()?;
    match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            datagram.send_to_addr(message.as_bytes(), &address)?;
        }
        None => {
            datagram.send_to(message.as_bytes(), OsString::from(socket))?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_ready_to_a_path_socket_and_nothing_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        assert!(send(Some(path.as_os_str()), "READY=1").unwrap());
        let mut buffer = [0u8; 64];
        let n = systemd.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"READY=1");
        assert!(!send(None, "READY=1").unwrap());
        assert!(!send(Some(OsStr::new("")), "READY=1").unwrap());
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("halite-notify-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&address).unwrap();
        assert!(send(Some(OsStr::new(&format!("@{name}"))), "READY=1").unwrap());
        let mut buffer = [0u8; 64];
        let n = systemd.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"READY=1");
    }
}
