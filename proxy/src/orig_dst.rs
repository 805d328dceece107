//! The original destination of a connection that iptables redirected to one of our listeners
//! (`SO_ORIGINAL_DST`, through socket2's safe wrapper): where an application's outbound
//! connection was going, or which of a pod's ports an inbound connection was for.

use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The original destination of a redirected connection; `None` when it was not redirected.
pub fn original_dst(tcp: &TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    let sock = SockRef::from(tcp);
    // A dual-stack listener ([::]) sees IPv4 clients as v4-mapped IPv6 addresses; their
    // original destination is in the IPv4 table.
    let dst = match local {
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_none() => sock.original_dst_v6(),
        _ => sock.original_dst_v4(),
    }
    .ok()?
    .as_socket()?;
    let unmapped = |a: SocketAddr| match a {
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or(a, |ip| SocketAddr::new(ip.into(), v6.port())),
        v4 => v4,
    };
    (unmapped(dst) != unmapped(local)).then_some(unmapped(dst))
}
