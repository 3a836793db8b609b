//! `--discover mdns`: find peers on the LAN (edge boxes, a home lab) without a seed address.
//!
//! Each node announces `_beamclaw-mesh._udp.local.` with its mesh port and node id, and browses
//! for the others; every node it finds is handed to the mesh as a seed. Joining still needs the
//! cluster secret: a node of another cluster on the same LAN fails the TLS handshake.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use beamclaw_mesh::driver::MeshHandle;
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};

/// The DNS-SD service type of the mesh.
pub const MDNS_SERVICE_TYPE: &str = "_beamclaw-mesh._udp.local.";
/// How long the browse loop waits for an event before checking whether it should stop.
const BROWSE_POLL_MS: u64 = 1_000;

#[derive(Debug, thiserror::Error)]
#[error("mDNS discovery: {0}")]
pub struct DiscoveryError(String);

/// Announces this node and feeds every peer found to the mesh, until the node stops.
pub struct Discovery {
    daemon: ServiceDaemon,
}

impl Discovery {
    pub fn start(mesh: MeshHandle) -> Result<Discovery, DiscoveryError> {
        let err = |e: mdns_sd::Error| DiscoveryError(e.to_string());
        let daemon = ServiceDaemon::new().map_err(err)?;
        let me = mesh.node_id();
        let addr = mesh.mesh_addr();
        let instance = me.short();
        let host = format!("beamclaw-{instance}.local.");
        let node_hex = hex::encode(me.0);
        let props = [("node", node_hex.as_str()), ("proto", "1")];
        let info = if addr.ip().is_unspecified() {
            ServiceInfo::new(MDNS_SERVICE_TYPE, &instance, &host, "", addr.port(), &props[..])
                .map(ServiceInfo::enable_addr_auto)
        } else {
            ServiceInfo::new(
                MDNS_SERVICE_TYPE,
                &instance,
                &host,
                addr.ip(),
                addr.port(),
                &props[..],
            )
        }
        .map_err(err)?;
        daemon.register(info).map_err(err)?;
        let events = daemon.browse(MDNS_SERVICE_TYPE).map_err(err)?;
        tracing::info!(service = MDNS_SERVICE_TYPE, %addr, "mDNS discovery on");
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("mdns-browse".into())
            .spawn(move || {
                loop {
                    let event = match events.recv_timeout(Duration::from_millis(BROWSE_POLL_MS)) {
                        Ok(e) => e,
                        Err(mdns_sd::RecvTimeoutError::Timeout) => continue,
                        Err(mdns_sd::RecvTimeoutError::Disconnected) => return,
                    };
                    let ServiceEvent::ServiceResolved(found) = event else { continue };
                    if found.txt_properties.get_property_val_str("node") == Some(node_hex.as_str())
                    {
                        continue;
                    }
                    let mut ips: Vec<IpAddr> =
                        found.addresses.iter().map(|a| a.to_ip_addr()).collect();
                    ips.sort_by_key(|ip| !ip.is_ipv4());
                    let seeds: Vec<SocketAddr> =
                        ips.into_iter().map(|ip| SocketAddr::new(ip, found.port)).take(2).collect();
                    if seeds.is_empty() {
                        continue;
                    }
                    tracing::info!(peer = %found.fullname, ?seeds, "found a peer by mDNS");
                    let mesh = mesh.clone();
                    runtime.spawn(async move {
                        let _ = mesh.join(seeds).await;
                    });
                }
            })
            .map_err(|e| DiscoveryError(e.to_string()))?;
        Ok(Discovery { daemon })
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}
