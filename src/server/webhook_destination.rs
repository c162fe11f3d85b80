//! Where a webhook may connect. A user names the URL, so without a check any user could make the
//! server reach its own network: loopback, the cloud metadata service (169.254.169.254), private
//! and unique-local ranges. Such destinations are refused unless the operator allows them with
//! `--webhook-allow` (a host name, `host:port`, an address or a CIDR range). A name is resolved
//! once, its addresses are checked, and delivery connects to a checked address: a second lookup
//! could answer differently (DNS rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

/// One `--webhook-allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// A host name or address, any port: what it resolves to is allowed.
    Host(String),
    /// A host name or address on one port.
    HostPort(String, u16),
    /// Every address in `network/prefix`.
    Range(IpAddr, u8),
}

impl AllowRule {
    pub fn parse(entry: &str) -> Result<AllowRule, String> {
        let entry = entry.trim();
        if let Some((network, prefix)) = entry.split_once('/') {
            let network: IpAddr = network.parse().map_err(|_| format!("`{entry}`: `{network}` is not an address"))?;
            let max = if network.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("`{entry}`: the prefix length must be 0 to {max}"))?;
            return Ok(AllowRule::Range(network, prefix));
        }
        if entry.is_empty() {
            return Err("an empty --webhook-allow entry".into());
        }
        // `[v6]:port`, `name:port`, or a bare name or address (a bare IPv6 address has colons).
        if let Some(rest) = entry.strip_prefix('[') {
            let (address, port) = rest.split_once("]:").ok_or_else(|| format!("`{entry}` is not [address]:port"))?;
            let port = port.parse().map_err(|_| format!("`{entry}`: `{port}` is not a port"))?;
            return Ok(AllowRule::HostPort(format!("[{}]", address.to_ascii_lowercase()), port));
        }
        match entry.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => {
                let port = port.parse().map_err(|_| format!("`{entry}`: `{port}` is not a port"))?;
                Ok(AllowRule::HostPort(host.to_ascii_lowercase(), port))
            }
            _ => Ok(AllowRule::Host(entry.to_ascii_lowercase())),
        }
    }

    /// Whether the rule names this host (as written in the URL) and port.
    fn names(&self, host: &str, port: u16) -> bool {
        match self {
            AllowRule::Host(allowed) => allowed.eq_ignore_ascii_case(host) || bracketed_eq(allowed, host),
            AllowRule::HostPort(allowed, allowed_port) => {
                *allowed_port == port && (allowed.eq_ignore_ascii_case(host) || bracketed_eq(allowed, host))
            }
            AllowRule::Range(..) => false,
        }
    }

    fn contains(&self, address: IpAddr) -> bool {
        match (self, address) {
            (&AllowRule::Range(IpAddr::V4(network), prefix), IpAddr::V4(address)) => {
                let mask = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (&AllowRule::Range(IpAddr::V6(network), prefix), IpAddr::V6(address)) => {
                let mask = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

/// `::1` written bare in a rule against `[::1]` in a URL.
fn bracketed_eq(rule: &str, host: &str) -> bool {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).is_some_and(|h| h.eq_ignore_ascii_case(rule))
}

/// Addresses a user may not make the server reach on its own say: everything but the public
/// unicast internet.
pub fn is_internal(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            // An IPv4 address in IPv6 clothing (::ffff:a.b.c.d, ::a.b.c.d) is judged as IPv4.
            if let Some(v4) = v6.to_ipv4_mapped().or_else(|| v4_compatible(v6)) {
                return is_internal_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || first & 0xfe00 == 0xfc00 // unique local fc00::/7
                || first & 0xffc0 == 0xfe80 // link-local fe80::/10
                || first & 0xffc0 == 0xfec0 // site-local fec0::/10 (deprecated, still routed inside)
                || (first == 0x64 && v6.segments()[1] == 0xff9b) // NAT64 64:ff9b::/96 reaches IPv4
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
        }
    }
}

fn v4_compatible(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    (s[..6].iter().all(|&x| x == 0) && !v6.is_loopback() && !v6.is_unspecified())
        .then(|| Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8))
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local() // 169.254.0.0/16: the cloud metadata service
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT 100.64.0.0/10
        || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240 // reserved
}

/// The operator's `--webhook-allow` rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    pub rules: Vec<AllowRule>,
}

impl Allowed {
    pub fn parse(entries: &[String]) -> Result<Allowed, String> {
        Ok(Allowed { rules: entries.iter().map(|e| AllowRule::parse(e)).collect::<Result<_, _>>()? })
    }

    /// Named by a rule: every address it resolves to is allowed.
    pub fn names(&self, host: &str, port: u16) -> bool {
        self.rules.iter().any(|rule| rule.names(host, port))
    }

    /// `address` may be reached: public, or inside an allowed range.
    pub fn permits(&self, address: IpAddr) -> bool {
        !is_internal(address) || self.rules.iter().any(|rule| rule.contains(address))
    }

    /// Resolves `host` once and picks an address to connect to: the first that is allowed.
    /// Refused when every address is internal and not allowed.
    pub fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addresses: Vec<SocketAddr> =
            (bare, port).to_socket_addrs().map_err(|e| format!("cannot resolve {host}: {e}"))?.collect();
        if addresses.is_empty() {
            return Err(format!("{host} has no address"));
        }
        if self.names(host, port) {
            return Ok(addresses[0]);
        }
        addresses.iter().copied().find(|a| self.permits(a.ip())).ok_or_else(|| {
            format!(
                "{host} resolves to {}, an internal address that webhooks may not reach (the operator allows one with --webhook-allow)",
                addresses[0].ip()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_ranges_are_recognised_in_both_families() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(is_internal(ip(internal)), "{internal}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(!is_internal(ip(public)), "{public}");
        }
    }

    #[test]
    fn rules_allow_names_ports_and_ranges() {
        let allowed =
            Allowed::parse(&["hooks.internal".into(), "127.0.0.1:9000".into(), "10.0.0.0/8".into(), "::1".into()])
                .unwrap();
        assert!(allowed.names("HOOKS.internal", 80) && allowed.names("127.0.0.1", 9000));
        assert!(!allowed.names("127.0.0.1", 9001));
        assert!(allowed.names("[::1]", 8080));
        assert!(allowed.permits(ip("10.200.0.1")));
        assert!(!allowed.permits(ip("192.168.0.1")));
        assert!(allowed.permits(ip("8.8.8.8")), "public addresses need no rule");
        for bad in ["10.0.0.0/33", "x/8", "", "host:port", "[::1]"] {
            assert!(AllowRule::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_name_is_resolved_once_and_internal_answers_are_refused() {
        let none = Allowed::default();
        let refused = none.resolve("localhost", 8080).unwrap_err();
        assert!(refused.contains("internal address"), "{refused}");
        let allowed = Allowed::parse(&["localhost".into()]).unwrap();
        assert!(allowed.resolve("localhost", 8080).unwrap().ip().is_loopback());
        let by_range = Allowed::parse(&["127.0.0.0/8".into()]).unwrap();
        assert_eq!(by_range.resolve("127.0.0.1", 8080).unwrap(), "127.0.0.1:8080".parse().unwrap());
    }
}
