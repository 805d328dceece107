//! The redirection rules as `iptables-restore` input: a pure function of the configuration,
//! for IPv4 and IPv6 alike. Two chains of our own in the nat table, `WEFT_INBOUND` (jumped to
//! from PREROUTING) and `WEFT_OUTPUT` (from OUTPUT); every rule says why in its comment.

use std::fmt::Write as _;
use std::net::IpAddr;

pub const INBOUND_CHAIN: &str = "WEFT_INBOUND";
pub const OUTPUT_CHAIN: &str = "WEFT_OUTPUT";
/// iptables' multiport match takes at most 15 ports, a range counting as two.
const MULTIPORT_MAX: usize = 15;

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// A port or an inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

/// A subnet in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// What the rules are made from (the `weft-proxy init` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig {
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    pub skip_subnets: Vec<Subnet>,
}

/// Parses `25,3306,8000-8100`.
pub fn parse_ports(s: &str) -> Result<Vec<PortRange>, String> {
    let port = |p: &str| match p.trim().parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{p:?} is not a port (1 to 65535)")),
    };
    let mut out = Vec::new();
    for item in s.split(',').filter(|i| !i.trim().is_empty()) {
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if a > b {
                    return Err(format!("{item:?} ends before it starts"));
                }
                out.push(PortRange(a, b));
            }
            None => {
                let p = port(item)?;
                out.push(PortRange(p, p));
            }
        }
    }
    Ok(out)
}

/// Parses `10.0.0.0/8,fd00::/8`.
pub fn parse_subnets(s: &str) -> Result<Vec<Subnet>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (addr, prefix) = item
            .split_once('/')
            .ok_or_else(|| format!("{item:?} is not a CIDR (ADDRESS/PREFIX)"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{item:?}: {addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix.parse::<u8>() {
            Ok(p) if p <= max => p,
            _ => return Err(format!("{item:?}: the prefix must be 0 to {max}")),
        };
        out.push(Subnet { addr, prefix });
    }
    Ok(out)
}

/// Groups ranges so no group weighs more than multiport's 15 (a range weighs two).
pub fn chunks(ports: &[PortRange]) -> Vec<Vec<PortRange>> {
    let mut out: Vec<Vec<PortRange>> = Vec::new();
    let mut weight = 0;
    for p in ports {
        let w = if p.0 == p.1 { 1 } else { 2 };
        if out.is_empty() || weight + w > MULTIPORT_MAX {
            out.push(Vec::new());
            weight = 0;
        }
        if let Some(last) = out.last_mut() {
            last.push(*p);
        }
        weight += w;
    }
    out
}

fn multiport(ports: &[PortRange]) -> String {
    ports
        .iter()
        .map(|p| {
            if p.0 == p.1 {
                p.0.to_string()
            } else {
                format!("{}:{}", p.0, p.1)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The jump from a built-in chain to ours, as `iptables-save` prints it (so its presence can be
/// checked by comparing lines).
pub fn jump(builtin: &str) -> String {
    let (chain, why) = match builtin {
        "PREROUTING" => (INBOUND_CHAIN, "weft: inbound TCP to the proxy"),
        _ => (OUTPUT_CHAIN, "weft: outbound TCP to the proxy"),
    };
    format!("-A {builtin} -p tcp -m comment --comment \"{why}\" -j {chain}")
}

/// The `iptables-restore --noflush` input that installs the rules. Declaring our chains
/// creates them, or flushes them if they exist, so running it again gives the same rules;
/// the jumps are added only when `jumps_present` says they are not there yet.
pub fn install(family: Family, c: &RuleConfig, jumps_present: (bool, bool)) -> String {
    let mut s = String::from("*nat\n");
    let _ = writeln!(s, ":{INBOUND_CHAIN} - [0:0]");
    let _ = writeln!(s, ":{OUTPUT_CHAIN} - [0:0]");
    let rule = |s: &mut String, chain: &str, spec: &str, why: &str, target: &str| {
        let _ = writeln!(
            s,
            "-A {chain} {spec}-m comment --comment \"{why}\" -j {target}"
        );
    };
    // Inbound: the admin port (kubelet's probes of the proxy, Prometheus) and the inbound port
    // itself (a peer proxy dialing it keeps that as its destination) are never redirected.
    rule(
        &mut s,
        INBOUND_CHAIN,
        &format!("-p tcp -m tcp --dport {} ", c.admin_port),
        "weft: the proxy admin port",
        "RETURN",
    );
    rule(
        &mut s,
        INBOUND_CHAIN,
        &format!("-p tcp -m tcp --dport {} ", c.inbound_port),
        "weft: the proxy inbound port",
        "RETURN",
    );
    for group in chunks(&c.skip_inbound_ports) {
        rule(
            &mut s,
            INBOUND_CHAIN,
            &format!("-p tcp -m multiport --dports {} ", multiport(&group)),
            "weft: --skip-inbound-ports",
            "RETURN",
        );
    }
    rule(
        &mut s,
        INBOUND_CHAIN,
        "-p tcp ",
        "weft: inbound TCP to the proxy",
        &format!("REDIRECT --to-ports {}", c.inbound_port),
    );
    // Outbound: the proxy's own connections, loopback, skipped subnets and ports go out as
    // they are; the application's other TCP goes to the outbound port.
    rule(
        &mut s,
        OUTPUT_CHAIN,
        &format!("-m owner --uid-owner {} ", c.proxy_uid),
        "weft: the proxy own traffic",
        "RETURN",
    );
    rule(&mut s, OUTPUT_CHAIN, "-o lo ", "weft: loopback", "RETURN");
    let loopback = match family {
        Family::V4 => "127.0.0.0/8",
        Family::V6 => "::1/128",
    };
    rule(
        &mut s,
        OUTPUT_CHAIN,
        &format!("-d {loopback} "),
        "weft: loopback",
        "RETURN",
    );
    for net in &c.skip_subnets {
        if net.addr.is_ipv4() == (family == Family::V4) {
            rule(
                &mut s,
                OUTPUT_CHAIN,
                &format!("-d {}/{} ", net.addr, net.prefix),
                "weft: --skip-subnets",
                "RETURN",
            );
        }
    }
    for group in chunks(&c.skip_outbound_ports) {
        rule(
            &mut s,
            OUTPUT_CHAIN,
            &format!("-p tcp -m multiport --dports {} ", multiport(&group)),
            "weft: --skip-outbound-ports",
            "RETURN",
        );
    }
    rule(
        &mut s,
        OUTPUT_CHAIN,
        "-p tcp ",
        "weft: outbound TCP to the proxy",
        &format!("REDIRECT --to-ports {}", c.outbound_port),
    );
    if !jumps_present.0 {
        let _ = writeln!(s, "{}", jump("PREROUTING"));
    }
    if !jumps_present.1 {
        let _ = writeln!(s, "{}", jump("OUTPUT"));
    }
    s.push_str("COMMIT\n");
    s
}

/// The input that removes what [`install`] added: the jumps that are there, then our chains
/// when they exist.
pub fn cleanup(jumps_present: (bool, bool), chains_present: bool) -> String {
    let mut s = String::from("*nat\n");
    for (present, builtin) in [(jumps_present.0, "PREROUTING"), (jumps_present.1, "OUTPUT")] {
        if present {
            let _ = writeln!(s, "{}", jump(builtin).replacen("-A ", "-D ", 1));
        }
    }
    if chains_present {
        for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
            let _ = writeln!(s, "-F {chain}\n-X {chain}");
        }
    }
    s.push_str("COMMIT\n");
    s
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn config() -> RuleConfig {
        RuleConfig {
            proxy_uid: 2102,
            inbound_port: 4143,
            outbound_port: 4140,
            admin_port: 4191,
            skip_inbound_ports: parse_ports("22").unwrap(),
            skip_outbound_ports: parse_ports("3306,8000-8100").unwrap(),
            skip_subnets: parse_subnets("10.96.0.0/12,fd00::/8").unwrap(),
        }
    }

    #[test]
    fn the_ipv4_rules_exempt_the_proxy_loopback_and_skips_then_redirect() {
        let text = install(Family::V4, &config(), (false, false));
        let expected = "\
*nat
:WEFT_INBOUND - [0:0]
:WEFT_OUTPUT - [0:0]
-A WEFT_INBOUND -p tcp -m tcp --dport 4191 -m comment --comment \"weft: the proxy admin port\" -j RETURN
-A WEFT_INBOUND -p tcp -m tcp --dport 4143 -m comment --comment \"weft: the proxy inbound port\" -j RETURN
-A WEFT_INBOUND -p tcp -m multiport --dports 22 -m comment --comment \"weft: --skip-inbound-ports\" -j RETURN
-A WEFT_INBOUND -p tcp -m comment --comment \"weft: inbound TCP to the proxy\" -j REDIRECT --to-ports 4143
-A WEFT_OUTPUT -m owner --uid-owner 2102 -m comment --comment \"weft: the proxy own traffic\" -j RETURN
-A WEFT_OUTPUT -o lo -m comment --comment \"weft: loopback\" -j RETURN
-A WEFT_OUTPUT -d 127.0.0.0/8 -m comment --comment \"weft: loopback\" -j RETURN
-A WEFT_OUTPUT -d 10.96.0.0/12 -m comment --comment \"weft: --skip-subnets\" -j RETURN
-A WEFT_OUTPUT -p tcp -m multiport --dports 3306,8000:8100 -m comment --comment \"weft: --skip-outbound-ports\" -j RETURN
-A WEFT_OUTPUT -p tcp -m comment --comment \"weft: outbound TCP to the proxy\" -j REDIRECT --to-ports 4140
-A PREROUTING -p tcp -m comment --comment \"weft: inbound TCP to the proxy\" -j WEFT_INBOUND
-A OUTPUT -p tcp -m comment --comment \"weft: outbound TCP to the proxy\" -j WEFT_OUTPUT
COMMIT
";
        assert_eq!(text, expected);
    }

    #[test]
    fn ipv6_gets_its_own_loopback_and_subnets_and_present_jumps_are_not_repeated() {
        let text = install(Family::V6, &config(), (true, true));
        assert!(text.contains("-d ::1/128 "));
        assert!(text.contains("-d fd00::/8 "));
        assert!(!text.contains("10.96.0.0"));
        assert!(!text.contains("-A PREROUTING") && !text.contains("-A OUTPUT"));
        let undo = cleanup((true, false), true);
        assert!(undo.contains("-D PREROUTING -p tcp -m comment"));
        assert!(!undo.contains("-D OUTPUT"));
        assert!(undo.contains("-X WEFT_INBOUND") && undo.contains("-X WEFT_OUTPUT"));
    }

    #[test]
    fn bad_ports_and_subnets_are_named() {
        assert!(parse_ports("0").unwrap_err().contains("\"0\""));
        assert!(parse_ports("90-80").unwrap_err().contains("ends before"));
        assert!(parse_subnets("10.0.0.0").unwrap_err().contains("CIDR"));
        assert!(
            parse_subnets("10.0.0.0/40")
                .unwrap_err()
                .contains("0 to 32")
        );
    }

    proptest! {
        #[test]
        fn chunks_cover_every_port_and_respect_multiport(ranges in prop::collection::vec((1u16..65535, 0u16..50), 0..60)) {
            let ports: Vec<PortRange> = ranges
                .iter()
                .map(|&(a, len)| PortRange(a, a.saturating_add(len)))
                .collect();
            let groups = chunks(&ports);
            let flat: Vec<PortRange> = groups.iter().flatten().copied().collect();
            prop_assert_eq!(&flat, &ports);
            for g in &groups {
                let weight: usize = g.iter().map(|p| if p.0 == p.1 { 1 } else { 2 }).sum();
                prop_assert!(weight <= MULTIPORT_MAX && !g.is_empty());
            }
            // The text form parses back to the same ranges.
            let text = ports.iter().map(|p| if p.0 == p.1 { p.0.to_string() } else { format!("{}-{}", p.0, p.1) }).collect::<Vec<_>>().join(",");
            prop_assert_eq!(parse_ports(&text).unwrap(), ports);
        }
    }
}
