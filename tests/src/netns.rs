//! Network namespaces for partition tests: one namespace per node, joined by a bridge in a
//! "switch" namespace of its own (so the host's bridge netfilter rules, such as Docker's
//! `FORWARD DROP`, never see the traffic), plus a veth from the host into the bridge so the test
//! reaches every node's gateway whatever the partition.
//!
//! ```text
//!  host (test, mock model)  10.N.M.254 ──┐
//!  ns node-1                10.N.M.1   ──┤ br0 in ns "switch"
//!  ns node-2                10.N.M.2   ──┤
//!  ns node-3                10.N.M.3   ──┘
//! ```
//!
//! A partition is a pair of blackhole routes between two nodes' namespaces: packets between
//! them vanish both ways, while the host still reaches both. Everything is removed on drop.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Environment variable: `require` makes a missing namespace permission a failure, not a skip.
pub const REQUIRE_ENV: &str = "BEAMCLAW_E2E_NETNS";
/// Nodes a lab holds at most (addresses .1 to .N of its /24).
pub const LAB_NODES_MAX: usize = 16;

/// The `ip` binary (iproute2).
pub fn ip_bin() -> Option<PathBuf> {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why namespaces cannot be used here, or `Ok` after installing iproute2 where it is missing
/// and we may (root with apt-get, as on a fresh CI machine).
fn available() -> std::result::Result<PathBuf, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN); \
                    run the tests as root, e.g. in CI"
            .into());
    }
    if let Some(ip) = ip_bin() {
        return Ok(ip);
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        return Err("the `ip` command (iproute2) is missing and apt-get is not available \
                    to install it"
            .into());
    }
    eprintln!("iproute2 is missing: apt-get install -y iproute2");
    let install = || run("apt-get", &["install", "-y", "-q", "iproute2"]);
    if install().is_err() {
        let _ = run("apt-get", &["update", "-q"]);
        install().map_err(|e| format!("cannot install iproute2: {e:#}"))?;
    }
    ip_bin().ok_or_else(|| "apt-get installed iproute2 but `ip` is still missing".to_string())
}

/// Namespaces, veths and a bridge; deleted on drop.
pub struct Lab {
    ip: String,
    prefix: String,
    subnet: [u8; 2],
    nodes: usize,
    switch: String,
    /// Blackhole routes in place: (node index, address cut off).
    cuts: Vec<(usize, Ipv4Addr)>,
}

/// What a test does when namespaces are not permitted.
pub enum Setup {
    Ready(Lab),
    /// Namespaces are not permitted here; the reason says why.
    Skip(String),
}

impl Lab {
    /// Creates namespaces for `nodes` nodes. `Setup::Skip` when this machine does not permit
    /// namespaces (not root, no iproute2, a container without the capabilities), unless
    /// `BEAMCLAW_E2E_NETNS=require`, in which case that is an error.
    pub fn create(nodes: usize) -> Result<Setup> {
        if nodes == 0 || nodes > LAB_NODES_MAX {
            bail!("a lab holds 1 to {LAB_NODES_MAX} nodes, not {nodes}");
        }
        let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "require");
        let ip = match available() {
            Ok(ip) => ip,
            Err(reason) if required => bail!("{REQUIRE_ENV}=require, but {reason}"),
            Err(reason) => return Ok(Setup::Skip(reason)),
        };
        let pid = std::process::id();
        let prefix = format!("bc{}", pid % 10_000_000);
        let subnet = [200 + (pid % 50) as u8, ((pid / 50) % 250) as u8];
        let mut lab = Lab {
            ip: ip.display().to_string(),
            switch: format!("{prefix}sw"),
            prefix,
            subnet,
            nodes,
            cuts: Vec::new(),
        };
        // A first namespace tells whether we may: in an unprivileged container this fails.
        if let Err(e) = lab.ip(&["netns", "add", &lab.switch.clone()]) {
            let reason = format!("network namespaces are not permitted here: {e:#}");
            if required {
                bail!("{REQUIRE_ENV}=require, but {reason}");
            }
            return Ok(Setup::Skip(reason));
        }
        lab.build().context("building the network namespaces")?;
        Ok(Setup::Ready(lab))
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        run(&self.ip, args)
    }

    fn in_ns(&self, ns: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", ns, self.ip.as_str()];
        all.extend_from_slice(args);
        self.ip(&all)
    }

    /// The namespace of node `i`.
    pub fn netns(&self, i: usize) -> String {
        format!("{}n{}", self.prefix, i + 1)
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> IpAddr {
        IpAddr::V4(self.v4(i))
    }

    fn v4(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet[0], self.subnet[1], (i + 1) as u8)
    }

    /// The host's address on the lab's network (where a mock model listens).
    pub fn host_addr(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.subnet[0], self.subnet[1], 254))
    }

    fn build(&mut self) -> Result<()> {
        let sw = self.switch.clone();
        self.in_ns(&sw, &["link", "add", "br0", "type", "bridge"])?;
        self.in_ns(&sw, &["link", "set", "br0", "up"])?;
        self.in_ns(&sw, &["link", "set", "lo", "up"])?;
        // The host's port.
        let host = format!("{}h", self.prefix);
        let host_peer = format!("{}hp", self.prefix);
        self.ip(&["link", "add", &host, "type", "veth", "peer", "name", &host_peer])?;
        self.ip(&["link", "set", &host_peer, "netns", &sw])?;
        self.in_ns(&sw, &["link", "set", &host_peer, "master", "br0", "up"])?;
        let host_cidr = format!("{}/24", self.host_addr());
        self.ip(&["addr", "add", &host_cidr, "dev", &host])?;
        self.ip(&["link", "set", &host, "up"])?;
        for i in 0..self.nodes {
            let ns = self.netns(i);
            self.ip(&["netns", "add", &ns])?;
            self.in_ns(&ns, &["link", "set", "lo", "up"])?;
            let (inner, outer) =
                (format!("{}e{}", self.prefix, i + 1), format!("{}s{}", self.prefix, i + 1));
            self.ip(&["link", "add", &inner, "type", "veth", "peer", "name", &outer])?;
            self.ip(&["link", "set", &inner, "netns", &ns])?;
            self.ip(&["link", "set", &outer, "netns", &sw])?;
            self.in_ns(&sw, &["link", "set", &outer, "master", "br0", "up"])?;
            let cidr = format!("{}/24", self.v4(i));
            self.in_ns(&ns, &["addr", "add", &cidr, "dev", &inner])?;
            self.in_ns(&ns, &["link", "set", &inner, "up"])?;
        }
        Ok(())
    }

    /// Cuts every path between nodes of different groups (both directions); the host still
    /// reaches every node.
    pub fn partition(&mut self, groups: &[&[usize]]) -> Result<()> {
        for (g, group) in groups.iter().enumerate() {
            for other in groups.iter().skip(g + 1) {
                for a in group.iter() {
                    for b in other.iter() {
                        self.cut(*a, *b)?;
                        self.cut(*b, *a)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn cut(&mut self, from: usize, to: usize) -> Result<()> {
        let target = format!("{}/32", self.v4(to));
        self.in_ns(&self.netns(from), &["route", "add", "blackhole", &target])?;
        self.cuts.push((from, self.v4(to)));
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&mut self) -> Result<()> {
        while let Some((from, to)) = self.cuts.pop() {
            let target = format!("{to}/32");
            self.in_ns(&self.netns(from), &["route", "del", "blackhole", &target])?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth ends in it, and with them their peers.
        for i in 0..self.nodes {
            let _ = self.ip(&["netns", "del", &self.netns(i)]);
        }
        let _ = self.ip(&["netns", "del", &self.switch]);
        let _ = self.ip(&["link", "del", &format!("{}h", self.prefix)]);
    }
}
