//! What to configure, as data: one [`Plan`] per interface of `[network]` —
//! the primary interface, then `[[network.interfaces]]`, then
//! `[[network.vlans]]`, in file order — each with its rank.
//!
//! The rank decides what several interfaces would otherwise fight over:
//! - **Default route.** Every gateway, static or leased, is installed with
//!   a metric: 0 for the primary interface, `1024 + rank` for the others
//!   (the way dhcpcd and NetworkManager give each interface its own metric).
//!   The kernel uses the lowest, so the primary's gateway wins while it has
//!   one, and a further interface's takes over when the primary has none
//!   (no gateway, or its lease was lost). Distinct metrics also mean one
//!   interface's route never replaces another's.
//! - **DNS.** `resolv.conf` lists the servers in rank order: per interface
//!   its configured `dns`, else what its lease gave, without duplicates
//!   (see [`super::resolv::merge`]); the lease's search domains likewise.
//!
//! Subnet routes need nothing: the kernel adds one with each address.

use cairn_image::config::{IpCidr, Network};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The metric of the first further interface's default route (systemd-networkd's
/// DHCP default; the primary's is 0, below anything a user adds by hand).
const FURTHER_METRIC: u32 = 1024;

/// One interface to configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// 0 = the primary interface, then file order.
    pub rank: usize,
    /// `None` = the primary interface, picked by [`super::iface::scan`].
    pub name: Option<String>,
    /// Set for a VLAN: the link to create before configuring it.
    pub vlan: Option<VlanLink>,
    pub dhcp: bool,
    pub addresses: Vec<IpCidr>,
    pub gateway: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    /// Configured DNS servers; when set, a lease's are not used.
    pub dns: Vec<IpAddr>,
}

/// An 802.1Q link: parent interface and VLAN id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanLink {
    pub parent: String,
    pub id: u16,
}

impl Plan {
    /// The metric of this interface's default routes.
    pub fn metric(&self) -> u32 {
        match self.rank {
            0 => 0,
            rank => FURTHER_METRIC.saturating_add(u32::try_from(rank).unwrap_or(u32::MAX)),
        }
    }

    /// The config key path, for messages.
    pub fn key(&self) -> String {
        match (&self.name, &self.vlan) {
            (_, Some(v)) => format!("network.vlans ({}.{})", v.parent, v.id),
            (Some(name), None) if self.rank > 0 => format!("network.interfaces ({name})"),
            _ => "network".to_string(),
        }
    }
}

/// The plans of a `[network]` table, primary first.
pub fn plans(config: &Network) -> Vec<Plan> {
    let mut plans = vec![Plan {
        rank: 0,
        name: config.interface.clone(),
        vlan: None,
        dhcp: config.dhcp,
        addresses: config.static_addresses(),
        gateway: config.gateway,
        gateway6: config.gateway6,
        dns: config.dns.clone(),
    }];
    for iface in &config.interfaces {
        plans.push(Plan {
            rank: plans.len(),
            name: Some(iface.name.clone()),
            vlan: None,
            dhcp: iface.dhcp,
            addresses: iface.addresses.clone(),
            gateway: iface.gateway,
            gateway6: iface.gateway6,
            dns: iface.dns.clone(),
        });
    }
    for vlan in &config.vlans {
        plans.push(Plan {
            rank: plans.len(),
            name: Some(vlan.interface_name()),
            vlan: Some(VlanLink {
                parent: vlan.link.clone(),
                id: vlan.id,
            }),
            dhcp: vlan.dhcp,
            addresses: vlan.addresses.clone(),
            gateway: vlan.gateway,
            gateway6: vlan.gateway6,
            dns: vlan.dns.clone(),
        });
    }
    plans
}

/// The interfaces configured on their own: never picked as the primary.
pub fn named_others(plans: &[Plan]) -> Vec<String> {
    plans
        .iter()
        .filter(|p| p.rank > 0)
        .filter_map(|p| p.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(text: &str) -> Network {
        let config = cairn_image::config::Config::parse(&format!("version = 1\n{text}"), "c")
            .expect("valid config");
        config.network
    }

    #[test]
    fn primary_then_interfaces_then_vlans_with_metrics() {
        let n = network(
            "[network]\ndns = [\"10.0.0.53\"]\n\
             [[network.interfaces]]\nname = \"eth1\"\n\
             [[network.interfaces]]\nname = \"eth2\"\ndhcp = false\naddresses = [\"10.9.0.5/24\"]\ngateway = \"10.9.0.1\"\n\
             [[network.vlans]]\nlink = \"eth3\"\nid = 42\ndhcp = false\naddresses = [\"192.168.42.5/24\"]\n\
             [[network.vlans]]\nlink = \"eth0\"\nid = 7\nname = \"mgmt\"\n",
        );
        let p = plans(&n);
        let names: Vec<Option<&str>> = p.iter().map(|p| p.name.as_deref()).collect();
        assert_eq!(
            names,
            [
                None,
                Some("eth1"),
                Some("eth2"),
                Some("eth3.42"),
                Some("mgmt")
            ]
        );
        let metrics: Vec<u32> = p.iter().map(Plan::metric).collect();
        assert_eq!(metrics, [0, 1025, 1026, 1027, 1028]);
        assert!(p[0].dhcp && p[1].dhcp && !p[2].dhcp && !p[3].dhcp && p[4].dhcp);
        assert_eq!(p[0].dns, ["10.0.0.53".parse::<IpAddr>().expect("ip")]);
        assert_eq!(p[2].gateway, Some(Ipv4Addr::new(10, 9, 0, 1)));
        assert_eq!(
            p[3].vlan,
            Some(VlanLink {
                parent: "eth3".into(),
                id: 42
            })
        );
        assert_eq!(p[4].vlan.as_ref().map(|v| v.parent.as_str()), Some("eth0"));
        assert_eq!(named_others(&p), ["eth1", "eth2", "eth3.42", "mgmt"]);
        assert_eq!(p[0].key(), "network");
        assert_eq!(p[1].key(), "network.interfaces (eth1)");
        assert_eq!(p[3].key(), "network.vlans (eth3.42)");
    }

    #[test]
    fn a_lone_primary_keeps_metric_zero() {
        let p = plans(&Network::default());
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].rank, p[0].metric(), p[0].dhcp), (0, 0, true));
        assert!(named_others(&p).is_empty());
    }
}
