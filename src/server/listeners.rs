//! The sockets doorman serves: binding them, and the options every accepted socket inherits.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::warn;

use super::BoundAddrs;
use crate::config::ServerSettings;

/// The sockets doorman serves, bound before `run` so callers (tests, `demo`) can bind port 0
/// and learn the real addresses, and so a bind failure is reported before anything starts.
#[derive(Debug)]
pub struct Listeners {
    pub tls: TcpListener,
    pub plain: Option<TcpListener>,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(settings: &ServerSettings) -> io::Result<Self> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {what} {addr}: {e}")))
        };
        Ok(Listeners {
            tls: bind(settings.listen, "server.listen").await?,
            plain: match settings.plain_listen {
                Some(a) => Some(bind(a, "server.plain_listen").await?),
                None => None,
            },
            admin: bind(settings.admin_listen, "server.admin_listen").await?,
        })
    }

    pub fn addrs(&self) -> io::Result<BoundAddrs> {
        Ok(BoundAddrs {
            tls: self.tls.local_addr()?,
            plain: self.plain.as_ref().map(|l| l.local_addr()).transpose()?,
            admin: self.admin.local_addr()?,
        })
    }
}

/// TCP_NODELAY and TCP keepalive, set once on the listening socket: Linux copies them to
/// every socket it accepts (checked by a test below), which saves four `setsockopt` calls
/// per connection. Keepalive probes find peers that vanished without a FIN (a pulled cable,
/// a crashed NAT), which would otherwise hold an upgraded tunnel and its permit.
pub(super) fn configure_listener(listener: &TcpListener) {
    let sock = socket2::SockRef::from(listener);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    if let Err(e) = sock
        .set_tcp_nodelay(true)
        .and_then(|()| sock.set_tcp_keepalive(&keepalive))
    {
        warn!(error = %e, "cannot set TCP_NODELAY and keepalive on the listener");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_nodelay_and_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        configure_listener(&listener);
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_client, (tcp, _)) = (client.unwrap(), accepted.unwrap());
        assert!(tcp.nodelay().unwrap());
        let sock = socket2::SockRef::from(&tcp);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
    }
}
