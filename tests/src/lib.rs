//! End-to-end test support: start real `beamclaw` processes and drive them through the gateway.
