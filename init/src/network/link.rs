//! The few rtnetlink calls networking needs: look an interface up by name,
//! set it up, add or remove an IPv4 address (with a lifetime, so the kernel
//! drops a DHCP address on its own if we ever stop renewing it), and set or
//! remove the default route.

use super::NetworkError;
use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, CacheInfo};
use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// An open rtnetlink connection (its socket task runs on the tokio runtime).
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the socket and spawns its I/O task; needs a tokio runtime.
    pub fn connect() -> Result<Netlink, NetworkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetworkError::NetlinkSocket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Sets `name` up and returns its interface index.
    pub async fn up(&self, name: &str) -> Result<u32, NetworkError> {
        let index = self.index(name).await?;
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(step(name, "set link up"))?;
        Ok(index)
    }

    async fn index(&self, name: &str) -> Result<u32, NetworkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(NetworkError::NoSuchInterface {
                interface: name.to_string(),
            }),
            Err(e) if is_errno(&e, libc::ENODEV) => Err(NetworkError::NoSuchInterface {
                interface: name.to_string(),
            }),
            Err(e) => Err(step(name, "get link")(e)),
        }
    }

    /// Adds (or refreshes) `addr/prefix` on the interface. With `valid`, the
    /// kernel removes the address when that time has passed.
    pub async fn set_address(
        &self,
        link: (&str, u32),
        addr: Ipv4Addr,
        prefix: u8,
        valid: Option<Duration>,
    ) -> Result<(), NetworkError> {
        let (name, index) = link;
        let mut req = self
            .handle
            .address()
            .add(index, IpAddr::V4(addr), prefix)
            .replace();
        if let Some(valid) = valid {
            let secs = u32::try_from(valid.as_secs()).unwrap_or(u32::MAX);
            let mut info = CacheInfo::default();
            info.ifa_preferred = secs;
            info.ifa_valid = secs;
            req.message_mut()
                .attributes
                .push(AddressAttribute::CacheInfo(info));
        }
        req.execute().await.map_err(step(name, "add address"))
    }

    /// Removes `addr/prefix`; an address already gone (expired) is fine.
    pub async fn remove_address(
        &self,
        link: (&str, u32),
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetworkError> {
        let (name, index) = link;
        let mut msg = rtnetlink::AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(addr, prefix)
            .build();
        msg.header.index = index;
        match self.handle.address().del(msg).execute().await {
            Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) => Ok(()),
            other => other.map_err(step(name, "remove address")),
        }
    }

    /// Makes `gateway` the default route through the interface.
    pub async fn set_default_route(
        &self,
        link: (&str, u32),
        gateway: Ipv4Addr,
        dhcp: bool,
    ) -> Result<(), NetworkError> {
        let (name, index) = link;
        let req = self
            .handle
            .route()
            .add(default_route(index, gateway, dhcp))
            .replace();
        req.execute().await.map_err(step(name, "add default route"))
    }

    /// Removes that default route; a route already gone is fine (the kernel
    /// flushes it with the address).
    pub async fn remove_default_route(
        &self,
        link: (&str, u32),
        gateway: Ipv4Addr,
    ) -> Result<(), NetworkError> {
        let (name, index) = link;
        match self
            .handle
            .route()
            .del(default_route(index, gateway, true))
            .execute()
            .await
        {
            Err(e) if is_errno(&e, libc::ESRCH) => Ok(()),
            other => other.map_err(step(name, "remove default route")),
        }
    }
}

fn default_route(
    index: u32,
    gateway: Ipv4Addr,
    dhcp: bool,
) -> rtnetlink::packet_route::route::RouteMessage {
    let proto = if dhcp {
        RouteProtocol::Dhcp
    } else {
        RouteProtocol::Static
    };
    RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(index)
        .protocol(proto)
        .build()
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// Wraps a netlink error with the interface and step it failed at.
fn step(interface: &str, step: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let interface = interface.to_string();
    move |source| NetworkError::Netlink {
        interface,
        step,
        source,
    }
}
