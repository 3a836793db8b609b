//! Test harness: a gateway on a real socket over the fake service, a protocol client built on
//! tokio-tungstenite, device identities, and a minimal HTTP/1.1 client.
// Test support: a failed unwrap is a failed test, which is what it should be.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod fake;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use beamclaw_gateway::{AuthConfig, FilePairingStore, GatewayConfig, PairingStore, Registry, bind};
use ed25519_dalek::{Signer, SigningKey};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use fake::{Fake, FakeService};

pub const TOKEN: &str = "test-token-0123456789";

/// Panics seen by the process, with the thread they happened on. Gateway tasks of a
/// `#[tokio::test]` run on the test's own thread, so a test can tell that the server it started
/// panicked (tokio would otherwise swallow a panicking connection task).
static PANICS: std::sync::Mutex<Vec<(std::thread::ThreadId, String)>> =
    std::sync::Mutex::new(Vec::new());

fn record_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((std::thread::current().id(), info.to_string()));
            previous(info);
        }));
    });
}

/// Fails if anything panicked on this thread since the gateway started.
pub fn assert_no_panics() {
    let me = std::thread::current().id();
    let panics: Vec<String> = PANICS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|(thread, _)| *thread == me)
        .map(|(_, message)| message.clone())
        .collect();
    assert!(panics.is_empty(), "the gateway panicked: {panics:?}");
}
/// How long a test waits for any one frame before failing.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);

pub struct Gateway {
    pub addr: SocketAddr,
    pub fake: Arc<FakeService>,
    pub pairing: Arc<FilePairingStore>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Stops the gateway, waits for it, and checks that nothing panicked along the way.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        // Connection tasks finish their cleanup after the server returns.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_no_panics();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A token-auth config on 127.0.0.1, port 0.
pub fn config() -> GatewayConfig {
    GatewayConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        auth: AuthConfig::token(TOKEN),
        ..Default::default()
    }
}

pub async fn start(config: GatewayConfig) -> Gateway {
    record_panics();
    let dir = tempfile::tempdir().unwrap();
    let pairing = Arc::new(FilePairingStore::open(dir.path().join("devices")).unwrap());
    let fake = FakeService::new();
    let bound = bind(config).await.unwrap();
    let addr = bound.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let service = Arc::new(Fake(fake.clone()));
    let store: Arc<dyn PairingStore> = pairing.clone();
    let task = tokio::spawn(async move {
        let result = bound
            .serve(service, store, Registry::default(), async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(err) = result {
            panic!("gateway failed: {err}");
        }
    });
    Gateway { addr, fake, pairing, stop: Some(stop), task: Some(task), _dir: dir }
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An Ed25519 device identity as OpenClaw clients hold it.
pub struct Device {
    pub key: SigningKey,
}

impl Device {
    pub fn new(seed: u8) -> Self {
        Device { key: SigningKey::from_bytes(&[seed; 32]) }
    }

    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.verifying_key().to_bytes())
    }

    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.key.verifying_key().to_bytes()))
    }

    /// `connect.device` signed over the v3 (or v2) payload.
    pub fn proof(&self, v3: bool, c: &ConnectOptions, nonce: &str, ts: u64) -> Value {
        let scopes = c.scopes.join(",");
        let token = c.token.clone().or_else(|| c.device_token.clone()).unwrap_or_default();
        let mut fields = vec![
            if v3 { "v3".to_owned() } else { "v2".to_owned() },
            self.id(),
            c.client_id.clone(),
            c.mode.clone(),
            c.role.clone(),
            scopes,
            ts.to_string(),
            token,
            nonce.to_owned(),
        ];
        if v3 {
            fields.push(c.platform.trim().to_lowercase());
            fields.push(c.device_family.clone().unwrap_or_default().trim().to_lowercase());
        }
        let payload = fields.join("|");
        let signature = URL_SAFE_NO_PAD.encode(self.key.sign(payload.as_bytes()).to_bytes());
        json!({"id": self.id(), "publicKey": self.public_key(), "signature": signature,
               "signedAt": ts, "nonce": nonce})
    }
}

#[derive(Clone)]
pub struct ConnectOptions {
    pub token: Option<String>,
    pub password: Option<String>,
    pub device_token: Option<String>,
    pub client_id: String,
    pub mode: String,
    pub role: String,
    pub scopes: Vec<String>,
    pub platform: String,
    pub device_family: Option<String>,
    pub min_protocol: u32,
    pub max_protocol: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            token: Some(TOKEN.into()),
            password: None,
            device_token: None,
            client_id: "test".into(),
            mode: "test".into(),
            role: "operator".into(),
            scopes: vec!["operator.admin".into()],
            platform: "Linux".into(),
            device_family: Some("Desktop".into()),
            min_protocol: 4,
            max_protocol: 4,
        }
    }
}

impl ConnectOptions {
    pub fn scopes(mut self, scopes: &[&str]) -> Self {
        self.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    pub fn params(&self, device: Option<Value>) -> Value {
        let mut auth = serde_json::Map::new();
        if let Some(t) = &self.token {
            auth.insert("token".into(), t.clone().into());
        }
        if let Some(p) = &self.password {
            auth.insert("password".into(), p.clone().into());
        }
        if let Some(t) = &self.device_token {
            auth.insert("deviceToken".into(), t.clone().into());
        }
        let mut client = json!({"id": self.client_id, "version": "1.0.0", "platform": self.platform,
                                "mode": self.mode, "displayName": "tester"});
        if let Some(f) = &self.device_family {
            client["deviceFamily"] = f.clone().into();
        }
        let mut params = json!({
            "minProtocol": self.min_protocol, "maxProtocol": self.max_protocol,
            "client": client, "role": self.role, "scopes": self.scopes, "caps": [],
            "auth": Value::Object(auth),
        });
        if let Some(d) = device {
            params["device"] = d;
        }
        params
    }
}

/// A protocol client: sends requests and collects every frame it receives.
pub struct Client {
    pub socket: Socket,
    pub events: Vec<Value>,
    /// Responses that arrived while waiting for another one.
    pub responses: Vec<Value>,
    pub hello: Value,
    next_id: u64,
}

pub async fn open(gw: &Gateway) -> Socket {
    let (socket, _) = tokio_tungstenite::connect_async(gw.ws_url()).await.unwrap();
    socket
}

pub async fn next_json(socket: &mut Socket) -> Option<Value> {
    loop {
        let message =
            tokio::time::timeout(FRAME_WAIT, socket.next()).await.expect("no frame in time")?;
        match message {
            Ok(Message::Text(text)) => return Some(serde_json::from_str(text.as_str()).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Reads until the close frame; returns its code and reason.
pub async fn read_close(socket: &mut Socket) -> Option<(u16, String)> {
    loop {
        let message =
            tokio::time::timeout(FRAME_WAIT, socket.next()).await.expect("no close in time")?;
        match message {
            Ok(Message::Close(Some(frame))) => {
                return Some((u16::from(frame.code), frame.reason.to_string()));
            }
            Ok(Message::Close(None)) => return Some((1005, String::new())),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

pub async fn challenge(socket: &mut Socket) -> (String, u64) {
    let frame = next_json(socket).await.expect("challenge");
    assert_eq!(frame["type"], "event");
    assert_eq!(frame["event"], "connect.challenge");
    assert!(frame.get("seq").is_none());
    (
        frame["payload"]["nonce"].as_str().unwrap().to_owned(),
        frame["payload"]["ts"].as_u64().unwrap(),
    )
}

pub async fn send_json(socket: &mut Socket, value: &Value) {
    socket.send(Message::text(value.to_string())).await.unwrap();
}

/// Sends `connect` and returns the response frame (and the socket).
pub async fn connect_raw(
    gw: &Gateway,
    options: &ConnectOptions,
    device: Option<(&Device, bool)>,
) -> (Socket, Value) {
    let mut socket = open(gw).await;
    let (nonce, ts) = challenge(&mut socket).await;
    let proof = device.map(|(d, v3)| d.proof(v3, options, &nonce, ts));
    send_json(
        &mut socket,
        &json!({"type": "req", "id": "c1", "method": "connect", "params": options.params(proof)}),
    )
    .await;
    let response = next_json(&mut socket).await.expect("connect response");
    (socket, response)
}

pub async fn connect(gw: &Gateway, options: &ConnectOptions) -> Client {
    connect_with(gw, options, None).await
}

pub async fn connect_with(
    gw: &Gateway,
    options: &ConnectOptions,
    device: Option<(&Device, bool)>,
) -> Client {
    let (socket, response) = connect_raw(gw, options, device).await;
    assert_eq!(response["ok"], true, "connect failed: {response}");
    Client {
        socket,
        events: Vec::new(),
        responses: Vec::new(),
        hello: response["payload"].clone(),
        next_id: 0,
    }
}

impl Client {
    pub async fn send(&mut self, method: &str, params: Value) -> String {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        send_json(
            &mut self.socket,
            &json!({"type": "req", "id": id, "method": method, "params": params}),
        )
        .await;
        id
    }

    /// The next `res` for `id`; events seen meanwhile are kept in `events`.
    pub async fn response(&mut self, id: &str) -> Value {
        if let Some(i) = self.responses.iter().position(|r| r["id"] == id) {
            return self.responses.remove(i);
        }
        loop {
            let frame = next_json(&mut self.socket).await.expect("connection closed while waiting");
            if frame["type"] == "res" && frame["id"] == id {
                return frame;
            }
            match frame["type"].as_str() {
                Some("event") => self.events.push(frame),
                Some("res") => self.responses.push(frame),
                _ => panic!("unexpected frame {frame}"),
            }
        }
    }

    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params).await;
        self.response(&id).await
    }

    /// Payload of a successful request; panics with the error otherwise.
    pub async fn ok(&mut self, method: &str, params: Value) -> Value {
        let res = self.request(method, params).await;
        assert_eq!(res["ok"], true, "{method} failed: {res}");
        res["payload"].clone()
    }

    /// Waits for an event matching `pred`, looking first at those already received.
    pub async fn event(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.events.iter().position(&pred) {
            return self.events.remove(i);
        }
        loop {
            let frame = next_json(&mut self.socket)
                .await
                .expect("connection closed while waiting for an event");
            if frame["type"] == "event" {
                if pred(&frame) {
                    return frame;
                }
                self.events.push(frame);
            } else {
                self.responses.push(frame);
            }
        }
    }
}

/// A minimal HTTP/1.1 exchange over a fresh TCP connection.
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    if let Some(body) = body {
        stream.write_all(body.as_bytes()).await.unwrap();
    }
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("HTTP response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("HTTP head");
    let mut lines = head.lines();
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_owned() };
    HttpResponse { status, headers, body }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    out
}

pub fn bearer() -> String {
    format!("Bearer {TOKEN}")
}
