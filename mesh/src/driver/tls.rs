//! Mutual TLS between nodes, pinned to Ed25519 node keys and gated by the cluster secret.
//!
//! Each node presents a self-signed certificate made from its own Ed25519 key, carrying one
//! extension: a MAC of its public key under the cluster secret. A peer accepts a certificate
//! only when (1) the TLS handshake proves possession of the certificate's key, (2) the MAC
//! verifies under our cluster secret, and (3) when we dialled a known node, the key is that
//! node's. So a node with the wrong secret fails the handshake and no mesh traffic ever reaches
//! it; a copied certificate is useless without its private key. The expected node id of a dial
//! travels in the TLS server name (`<hex[..32]>.<hex[32..]>.beamclaw`); seeds, whose id we do not
//! know yet, are dialled as `seed.beamclaw`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::core::NodeId;

/// ALPN of the mesh protocol.
pub const ALPN: &[u8] = b"beamclaw-mesh/1";

/// OID of the cluster-secret extension (a private arc; the value is a 32-byte keyed BLAKE3 MAC
/// of the node's public key).
const SECRET_EXTENSION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 59_999, 1, 1];

/// The server name used to dial a node whose id we do not know yet.
pub const SEED_SERVER_NAME: &str = "seed.beamclaw";

/// The secret used when none is configured and the node only listens on loopback (a laptop or a
/// local dev cluster). Non-loopback binds refuse to start without a real secret.
pub const LOOPBACK_DEV_SECRET: &str = "beamclaw-loopback-dev-cluster";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("could not build the node certificate: {0}")]
    Certificate(String),
    #[error("TLS configuration failed: {0}")]
    Config(String),
}

/// The node's Ed25519 key as TLS needs it.
#[derive(Clone)]
pub struct NodeKey {
    secret: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", hex::encode(&self.public[..4]))
    }
}

impl NodeKey {
    pub fn from_secret(secret: [u8; 32]) -> Result<Self, TlsError> {
        let mut copy = secret;
        let sk = libp2p_identity::ed25519::SecretKey::try_from_bytes(&mut copy)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let kp = libp2p_identity::ed25519::Keypair::from(sk);
        Ok(NodeKey { secret, public: kp.public().to_bytes() })
    }

    pub fn node_id(&self) -> NodeId {
        NodeId(self.public)
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret
    }

    /// PKCS#8 v1 DER of the Ed25519 key (RFC 8410).
    fn pkcs8(&self) -> Vec<u8> {
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(&self.secret);
        der
    }
}

/// The cluster secret as a MAC key.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(***)")
    }
}

impl ClusterKey {
    pub fn from_secret(secret: &str) -> Self {
        ClusterKey(blake3::derive_key("beamclaw cluster secret v1", secret.as_bytes()))
    }

    fn mac(&self, public: &[u8; 32]) -> [u8; 32] {
        *blake3::keyed_hash(&self.0, public).as_bytes()
    }
}

/// The certificate and key this node presents.
pub fn node_certificate(
    key: &NodeKey,
    cluster: &ClusterKey,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let pkcs8 = PrivatePkcs8KeyDer::from(key.pkcs8());
    let kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec!["node.beamclaw".to_string()])
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, key.node_id().to_string());
    params.custom_extensions.push(rcgen::CustomExtension::from_oid_content(
        SECRET_EXTENSION_OID,
        der_octet_string(&cluster.mac(&key.public)),
    ));
    let cert = params.self_signed(&kp).map_err(|e| TlsError::Certificate(e.to_string()))?;
    Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(pkcs8)))
}

fn der_octet_string(bytes: &[u8; 32]) -> Vec<u8> {
    let mut out = vec![0x04, 32];
    out.extend_from_slice(bytes);
    out
}

/// Reads a peer certificate: its Ed25519 key, if the cluster-secret MAC verifies.
pub fn verify_peer_certificate(cert: &[u8], cluster: &ClusterKey) -> Result<NodeId, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("malformed certificate: {e}"))?;
    let spki = parsed.public_key();
    if spki.algorithm.algorithm.to_id_string() != "1.3.101.112" {
        return Err("certificate key is not Ed25519".into());
    }
    let public: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| "Ed25519 key of the wrong length".to_string())?;
    let oid = SECRET_EXTENSION_OID.iter().map(u64::to_string).collect::<Vec<_>>().join(".");
    let ext = parsed.extensions().iter().find(|e| e.oid.to_id_string() == oid).ok_or(
        "certificate carries no cluster-secret proof (not a BeamClaw node, or an old one)",
    )?;
    let mac: &[u8] = match ext.value {
        [0x04, 32, rest @ ..] if rest.len() == 32 => rest,
        _ => return Err("malformed cluster-secret proof".into()),
    };
    let expected = cluster.mac(&public);
    // Constant time: a timing side channel here would leak the MAC byte by byte.
    let diff = expected.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err("cluster secret mismatch: this node belongs to another cluster or uses the wrong mesh.clusterSecret".into());
    }
    Ok(NodeId(public))
}

/// The TLS server name that pins a dial to `node`.
pub fn server_name_for(node: &NodeId) -> String {
    let h = hex::encode(node.0);
    format!("{}.{}.beamclaw", &h[..32], &h[32..])
}

fn node_from_server_name(name: &str) -> Option<NodeId> {
    let mut labels = name.split('.');
    let (a, b, tail) = (labels.next()?, labels.next()?, labels.next()?);
    if tail != "beamclaw" || labels.next().is_some() {
        return None;
    }
    let bytes = hex::decode(format!("{a}{b}")).ok()?;
    Some(NodeId(bytes.try_into().ok()?))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug)]
struct PeerVerifier {
    cluster: ClusterKey,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PeerVerifier {
    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let node =
            verify_peer_certificate(end_entity, &self.cluster).map_err(rustls::Error::General)?;
        let name = match server_name {
            ServerName::DnsName(d) => d.as_ref().to_string(),
            _ => {
                return Err(rustls::Error::General("mesh dials use DNS-style server names".into()));
            }
        };
        if name != SEED_SERVER_NAME {
            let expected = node_from_server_name(&name)
                .ok_or_else(|| rustls::Error::General(format!("bad mesh server name {name}")))?;
            if expected != node {
                return Err(rustls::Error::General(format!(
                    "peer presented node {} but {} was dialled",
                    node.short(),
                    expected.short()
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used between nodes".into()))
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _i: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_peer_certificate(end_entity, &self.cluster).map_err(rustls::Error::General)?;
        Ok(ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_tls12_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used between nodes".into()))
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// rustls configurations for both ends of mesh connections.
pub fn configs(
    key: &NodeKey,
    cluster: &ClusterKey,
) -> Result<(rustls::ServerConfig, rustls::ClientConfig), TlsError> {
    let (cert, private) = node_certificate(key, cluster)?;
    let verifier = Arc::new(PeerVerifier { cluster: cluster.clone(), provider: provider() });
    let err = |e: rustls::Error| TlsError::Config(e.to_string());
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(vec![cert.clone()], private.clone_key())
        .map_err(err)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![cert], private)
        .map_err(err)?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok((server, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> NodeKey {
        NodeKey::from_secret([b; 32]).unwrap()
    }

    #[test]
    fn certificate_verifies_under_its_cluster_secret_only() {
        let k = key(1);
        let good = ClusterKey::from_secret("s3cret");
        let (cert, _) = node_certificate(&k, &good).unwrap();
        assert_eq!(verify_peer_certificate(&cert, &good).unwrap(), k.node_id());
        let bad = ClusterKey::from_secret("other");
        let err = verify_peer_certificate(&cert, &bad).unwrap_err();
        assert!(err.contains("cluster secret mismatch"), "{err}");
    }

    #[test]
    fn garbage_certificates_are_refused_with_a_reason() {
        let cluster = ClusterKey::from_secret("x");
        assert!(
            verify_peer_certificate(b"not a certificate", &cluster)
                .unwrap_err()
                .contains("malformed")
        );
        assert!(verify_peer_certificate(&[], &cluster).is_err());
    }

    #[test]
    fn server_names_pin_node_ids() {
        let n = key(7).node_id();
        let name = server_name_for(&n);
        assert!(name.split('.').all(|l| l.len() <= 63));
        assert_eq!(node_from_server_name(&name), Some(n));
        assert_eq!(node_from_server_name(SEED_SERVER_NAME), None);
        assert!(rustls::pki_types::ServerName::try_from(name).is_ok());
    }

    #[test]
    fn configs_build() {
        configs(&key(3), &ClusterKey::from_secret("x")).unwrap();
    }
}
