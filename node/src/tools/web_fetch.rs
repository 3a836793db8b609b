//! `web_fetch`: GET an http(s) URL and return its text, with an SSRF guard.
//!
//! The guard refuses loopback, private (RFC 1918, unique-local), link-local (incl. cloud
//! metadata at 169.254.169.254), CGNAT, multicast, broadcast, documentation, benchmarking,
//! reserved and unspecified addresses, for IPv4 and IPv6 (v4-mapped, v4-compatible, NAT64,
//! 6to4 and Teredo addresses are judged by the IPv4 address inside). It is applied:
//! - to IP-literal hosts before any request;
//! - inside the HTTP client's DNS resolver, so the connection only ever goes to an allowed
//!   address even when a name re-resolves differently between checks (DNS rebinding);
//! - on every redirect (redirects are followed by hand, each hop checked again).
//!
//! No proxy is used (a proxy would resolve names where the guard cannot see them).
//! `tools.web.fetch.allowPrivate: true` turns the guard off; `allowCidrs` lets chosen ranges
//! through (e.g. an intranet wiki). HTML is reduced to readable text.

use super::{Tool, ToolContext, ToolOutput};
use futures::future::BoxFuture;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Default and largest body read, in bytes (`tools.web.fetch.maxBytes`).
pub const WEB_FETCH_BYTES_DEFAULT: usize = 2 * 1024 * 1024;
pub const WEB_FETCH_BYTES_LIMIT: usize = 16 * 1024 * 1024;
/// Default and largest whole-fetch time, in seconds (`tools.web.fetch.timeoutSeconds`).
pub const WEB_FETCH_TIMEOUT_SECONDS_DEFAULT: u64 = 30;
pub const WEB_FETCH_TIMEOUT_SECONDS_LIMIT: u64 = 300;
/// Time to connect to one address, in ms.
pub const WEB_FETCH_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Default and largest number of redirects followed (`tools.web.fetch.maxRedirects`).
pub const WEB_FETCH_REDIRECTS_DEFAULT: usize = 5;
pub const WEB_FETCH_REDIRECTS_LIMIT: usize = 20;
/// Default and largest characters returned (`maxChars`).
pub const WEB_FETCH_CHARS_DEFAULT: usize = 50_000;
pub const WEB_FETCH_CHARS_LIMIT: usize = 500_000;
/// Longest URL accepted, in bytes.
pub const URL_BYTES_MAX: usize = 8 * 1024;
/// Entries in `allowCidrs`.
pub const ALLOW_CIDRS_MAX: usize = 256;
/// The User-Agent sent unless configured.
pub const WEB_FETCH_USER_AGENT: &str =
    concat!("BeamClaw/", env!("CARGO_PKG_VERSION"), " (web_fetch; +https://github.com/beamclaw)");

/// An address range, `10.0.0.0/8` or `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr =
            addr.trim().parse().map_err(|_| format!("{text:?} is not an address or CIDR range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            if prefix == 0 { 0 } else { bits >> (width - prefix) }
        }
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u32::from(n).into(), self.prefix, 32)
                    == masked(u32::from(a).into(), self.prefix, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), self.prefix, 128) == masked(u128::from(a), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn v4_in(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    Cidr { net: IpAddr::V4(Ipv4Addr::from(net)), prefix }.contains(IpAddr::V4(ip))
}

/// Why an IPv4 address may not be fetched, if it may not.
fn v4_blocked(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u8, &str)] = &[
        ([0, 0, 0, 0], 8, "unspecified (\"this network\")"),
        ([10, 0, 0, 0], 8, "private"),
        ([100, 64, 0, 0], 10, "carrier-grade NAT"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([169, 254, 0, 0], 16, "link-local"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 0, 0, 0], 24, "IETF protocol assignments"),
        ([192, 0, 2, 0], 24, "documentation"),
        ([192, 88, 99, 0], 24, "6to4 relay"),
        ([192, 168, 0, 0], 16, "private"),
        ([198, 18, 0, 0], 15, "benchmarking"),
        ([198, 51, 100, 0], 24, "documentation"),
        ([203, 0, 113, 0], 24, "documentation"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved or broadcast"),
    ];
    RANGES.iter().find(|(net, prefix, _)| v4_in(ip, *net, *prefix)).map(|(_, _, why)| *why)
}

/// Why an address may not be fetched, if it may not.
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_blocked(v4),
        IpAddr::V6(v6) => v6_blocked(v6),
    }
}

fn v6_blocked(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    let bits = u128::from(ip);
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // IPv4 inside IPv6: judged by the IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_blocked(v4);
    }
    let embedded = |b: u128| Ipv4Addr::from((b & 0xffff_ffff) as u32);
    if bits >> 32 == 0 {
        // ::a.b.c.d (deprecated IPv4-compatible)
        return Some("IPv4-compatible (deprecated)");
    }
    if seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
        return v4_blocked(embedded(bits)); // NAT64 64:ff9b::/96
    }
    if seg[0] == 0x2002 {
        // 6to4 2002:aabb:ccdd::/48
        let v4 =
            Ipv4Addr::new((seg[1] >> 8) as u8, seg[1] as u8, (seg[2] >> 8) as u8, seg[2] as u8);
        return v4_blocked(v4);
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        return Some("Teredo");
    }
    if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        return Some("documentation");
    }
    if seg[0] == 0x0100 && seg[1..4] == [0, 0, 0] {
        return Some("discard-only");
    }
    match seg[0] {
        s if s & 0xfe00 == 0xfc00 => Some("unique-local (private)"),
        s if s & 0xffc0 == 0xfe80 => Some("link-local"),
        s if s & 0xffc0 == 0xfec0 => Some("site-local (deprecated)"),
        s if s & 0xff00 == 0xff00 => Some("multicast"),
        _ => None,
    }
}

/// Which addresses `web_fetch` may connect to.
#[derive(Clone, Debug, Default)]
pub struct AddressGuard {
    pub allow_private: bool,
    pub allow_cidrs: Vec<Cidr>,
}

impl AddressGuard {
    /// `Err` says why `ip` is refused.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        if self.allow_private || self.allow_cidrs.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match blocked_reason(ip) {
            None => Ok(()),
            Some(why) => Err(format!(
                "{ip} is a {why} address; web_fetch only reaches public addresses (set tools.web.fetch.allowPrivate or allowCidrs to change that)"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// A DNS resolver that only returns addresses the guard allows.
struct GuardedResolver {
    guard: Arc<AddressGuard>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let guard = self.guard.clone();
        Box::pin(async move {
            let (allowed, refused) = resolve_checked(&guard, &host)
                .await
                .map_err(|e| Box::new(Refused(e)) as Box<dyn std::error::Error + Send + Sync>)?;
            if allowed.is_empty() {
                return Err(Box::new(Refused(refused)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Resolves `host`; returns the allowed addresses and, when some were refused, why.
async fn resolve_checked(
    guard: &AddressGuard,
    host: &str,
) -> Result<(Vec<SocketAddr>, String), String> {
    let found = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut allowed = Vec::new();
    let mut refused = String::new();
    for addr in found {
        match guard.check(addr.ip()) {
            Ok(()) => allowed.push(addr),
            Err(why) => refused = format!("{host} resolves to {why}"),
        }
    }
    Ok((allowed, refused))
}

/// `tools.web.fetch`.
#[derive(Clone, Debug)]
pub struct WebFetchSettings {
    pub guard: AddressGuard,
    pub max_bytes: usize,
    pub timeout: Duration,
    pub max_redirects: usize,
    pub max_chars: usize,
    pub user_agent: String,
}

impl Default for WebFetchSettings {
    fn default() -> Self {
        WebFetchSettings {
            guard: AddressGuard::default(),
            max_bytes: WEB_FETCH_BYTES_DEFAULT,
            timeout: Duration::from_secs(WEB_FETCH_TIMEOUT_SECONDS_DEFAULT),
            max_redirects: WEB_FETCH_REDIRECTS_DEFAULT,
            max_chars: WEB_FETCH_CHARS_DEFAULT,
            user_agent: WEB_FETCH_USER_AGENT.to_string(),
        }
    }
}

pub struct WebFetchTool {
    settings: WebFetchSettings,
    client: reqwest::Client,
}

impl WebFetchTool {
    pub fn new(settings: WebFetchSettings) -> Result<Self, String> {
        crate::provider::install_crypto_provider();
        let guard = Arc::new(settings.guard.clone());
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { guard }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_millis(WEB_FETCH_CONNECT_TIMEOUT_MS))
            .timeout(settings.timeout)
            .user_agent(settings.user_agent.clone())
            .build()
            .map_err(|e| format!("cannot build the web_fetch HTTP client: {e}"))?;
        Ok(WebFetchTool { settings, client })
    }

    /// Checks the scheme and the host of one hop (IP literals here; names in the resolver,
    /// and here too for a clear message).
    async fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        match url.scheme() {
            "http" | "https" => {}
            other => return Err(format!("{other}: URLs are refused; only http and https")),
        }
        let host = url.host_str().ok_or_else(|| format!("{url} has no host"))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.settings.guard.check(ip);
        }
        let (allowed, refused) = resolve_checked(&self.settings.guard, bare).await?;
        if allowed.is_empty() {
            return Err(if refused.is_empty() {
                format!("{bare} has no address")
            } else {
                refused
            });
        }
        Ok(())
    }

    async fn fetch(&self, raw: &str, max_chars: usize) -> Result<String, String> {
        if raw.len() > URL_BYTES_MAX {
            return Err(format!("the URL is longer than {URL_BYTES_MAX} bytes"));
        }
        let mut url = reqwest::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
        let mut hops = 0usize;
        let response = loop {
            self.check_url(&url).await.map_err(|e| format!("refused {url}: {e}"))?;
            let response =
                self.client.get(url.clone()).send().await.map_err(|e| error_chain(&e))?;
            if !response.status().is_redirection() {
                break response;
            }
            let Some(location) =
                response.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok())
            else {
                break response;
            };
            if hops >= self.settings.max_redirects {
                return Err(format!(
                    "more than {} redirects; stopped at {url}",
                    self.settings.max_redirects
                ));
            }
            let next = url.join(location).map_err(|e| format!("bad redirect {location:?}: {e}"))?;
            tracing::debug!(from = %url, to = %next, "web_fetch redirect");
            url = next;
            hops += 1;
        };
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let textual = content_type.is_empty()
            || content_type.starts_with("text/")
            || content_type.contains("json")
            || content_type.contains("xml")
            || content_type.contains("javascript");
        if !textual {
            return Err(format!("{url} returned {content_type}, which is not text"));
        }
        let (body, cut) = read_capped(response, self.settings.max_bytes).await?;
        let raw_text = String::from_utf8_lossy(&body).into_owned();
        let text = if content_type.contains("html")
            || (content_type.is_empty() && raw_text.trim_start().starts_with('<'))
        {
            html_to_text(&raw_text)
        } else {
            raw_text
        };
        let mut text = text;
        let mut notes = Vec::new();
        if cut {
            notes.push(format!("the body was cut at {} bytes", self.settings.max_bytes));
        }
        if text.chars().count() > max_chars {
            let end = text.char_indices().nth(max_chars).map(|(i, _)| i).unwrap_or(text.len());
            text.truncate(end);
            notes.push(format!("the text was cut at {max_chars} characters"));
        }
        let mut out = format!("URL: {url}\nStatus: {}\n", status.as_u16());
        if !content_type.is_empty() {
            out.push_str(&format!("Content-Type: {content_type}\n"));
        }
        out.push('\n');
        out.push_str(&text);
        if !notes.is_empty() {
            out.push_str(&format!("\n\n[truncated: {}]", notes.join("; ")));
        }
        Ok(out)
    }
}

/// The error and its sources, so a refusal inside the resolver shows its reason.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> Result<(Vec<u8>, bool), String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = max - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    return Ok((body, true));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok((body, false)),
            Err(e) => return Err(format!("reading the body failed: {}", error_chain(&e))),
        }
    }
}

/// Readable text of an HTML page: scripts and styles dropped, block elements on their own
/// lines, list items bulleted, headings marked, entities decoded, whitespace collapsed.
pub fn html_to_text(html: &str) -> String {
    const SKIP: &[&str] = &["script", "style", "noscript", "template", "svg", "head"];
    const BLOCK: &[&str] = &[
        "p",
        "div",
        "br",
        "tr",
        "section",
        "article",
        "header",
        "footer",
        "main",
        "nav",
        "pre",
        "table",
        "ul",
        "ol",
        "blockquote",
        "form",
        "hr",
        "dl",
        "dt",
        "dd",
        "aside",
        "figure",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "li",
        "title",
        "body",
        "html",
    ];
    let title = extract_title(html);
    let mut out = String::new();
    if let Some(t) = &title {
        out.push_str("# ");
        out.push_str(t);
        out.push_str("\n\n");
    }
    let lower = html.to_ascii_lowercase();
    let bytes = html.as_bytes();
    let mut i = 0;
    let mut text = String::new();
    while i < bytes.len() {
        if bytes[i] == b'<' {
            if lower[i..].starts_with("<!--") {
                i = lower[i..].find("-->").map(|e| i + e + 3).unwrap_or(bytes.len());
                continue;
            }
            let end = match html[i..].find('>') {
                Some(e) => i + e + 1,
                None => bytes.len(),
            };
            // `end` is after a '>' or at the end of the text: both are char boundaries, and so
            // is `end - 1` when it is the '>'; an unclosed tag takes the rest of the text.
            let tag_end = if html.as_bytes().get(end - 1) == Some(&b'>') { end - 1 } else { end };
            let tag = &lower[i + 1..tag_end.max(i + 1)];
            let closing = tag.starts_with('/');
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if !closing && SKIP.contains(&name.as_str()) && !tag.ends_with('/') {
                let close = format!("</{name}");
                i = lower[end..].find(&close).map(|e| end + e).unwrap_or(bytes.len());
                i = lower[i..].find('>').map(|e| i + e + 1).unwrap_or(bytes.len());
                continue;
            }
            if BLOCK.contains(&name.as_str()) {
                text.push('\n');
                if !closing {
                    match name.as_str() {
                        "li" => text.push_str("- "),
                        h if h.len() == 2 && h.starts_with('h') => {
                            let level = h[1..].parse::<usize>().unwrap_or(1);
                            text.push_str(&"#".repeat(level));
                            text.push(' ');
                        }
                        _ => {}
                    }
                }
            } else if name == "td" || name == "th" {
                text.push(' ');
            }
            i = end;
            continue;
        }
        let next = html[i..].find('<').map(|n| i + n).unwrap_or(bytes.len());
        text.push_str(&decode_entities(&html[i..next]));
        i = next;
    }
    out.push_str(&collapse_whitespace(&text));
    out.trim().to_string()
}

fn extract_title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let start = lower.find("<title")?;
    let open_end = start + lower[start..].find('>')? + 1;
    let close = open_end + lower[open_end..].find("</title")?;
    let t = collapse_whitespace(&decode_entities(&html[open_end..close]));
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let mut window = tail.len().min(12);
        while !tail.is_char_boundary(window) {
            window -= 1;
        }
        let Some(semi) = tail[..window].find(';') else {
            out.push('&');
            rest = &tail[1..];
            continue;
        };
        let entity = &tail[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" | "#39" => Some('\''),
            "nbsp" => Some(' '),
            e if e.starts_with("#x") || e.starts_with("#X") => {
                u32::from_str_radix(&e[2..], 16).ok().and_then(char::from_u32)
            }
            e if e.starts_with('#') => e[1..].parse::<u32>().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &tail[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Spaces and tabs collapsed within lines, lines trimmed, at most one blank line in a row.
fn collapse_whitespace(s: &str) -> String {
    let mut out = String::new();
    let mut blank = 0;
    for line in s.lines() {
        let line: String = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.is_empty() {
            blank += 1;
            if blank == 1 && !out.is_empty() {
                out.push('\n');
            }
            continue;
        }
        blank = 0;
        out.push_str(&line);
        out.push('\n');
    }
    out
}

impl Tool for WebFetchTool {
    fn name(&self) -> &str {
        "web_fetch"
    }
    fn description(&self) -> &str {
        "Fetch an http or https URL and return its content as readable text (HTML is converted to text). Private, loopback and link-local addresses are refused."
    }
    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "url": {"type": "string", "description": "http:// or https:// URL"},
                "extractMode": {"type": "string", "enum": ["text", "markdown"]},
                "maxChars": {"type": "integer", "minimum": 100, "description": "Most characters returned (default 50000)"}
            },
            "required": ["url"]
        })
    }
    fn run<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let Some(url) = args.get("url").and_then(Value::as_str) else {
                return ToolOutput::error("missing string argument \"url\"");
            };
            let max_chars = args
                .get("maxChars")
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(self.settings.max_chars)
                .clamp(1, WEB_FETCH_CHARS_LIMIT);
            tokio::select! {
                result = self.fetch(url, max_chars) => match result {
                    Ok(text) => ToolOutput::ok(text),
                    Err(e) => {
                        tracing::info!(url, error = %e, "web_fetch refused or failed");
                        ToolOutput::error(e)
                    }
                },
                _ = ctx.cancel.cancelled() => ToolOutput::error("the turn was aborted"),
            }
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
    fn private_and_special_addresses_are_blocked_v4_and_v6() {
        for blocked in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
            "2001:db8::1",
        ] {
            assert!(blocked_reason(ip(blocked)).is_some(), "{blocked} must be blocked");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::",
        ] {
            assert!(blocked_reason(ip(public)).is_none(), "{public} must be allowed");
        }
    }

    #[test]
    fn guard_honours_allow_private_and_cidrs() {
        let strict = AddressGuard::default();
        assert!(strict.check(ip("127.0.0.1")).unwrap_err().contains("loopback"));
        let open = AddressGuard { allow_private: true, allow_cidrs: vec![] };
        assert!(open.check(ip("127.0.0.1")).is_ok());
        let some = AddressGuard {
            allow_private: false,
            allow_cidrs: vec![Cidr::parse("127.0.0.1/32").unwrap()],
        };
        assert!(some.check(ip("127.0.0.1")).is_ok());
        assert!(some.check(ip("127.0.0.2")).is_err());
        assert!(some.check(ip("::ffff:127.0.0.2")).is_err());
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.200.1.1")) && !c.contains(ip("11.0.0.1")));
        let c = Cidr::parse("fd00::/8").unwrap();
        assert!(c.contains(ip("fd12::1")) && !c.contains(ip("fe80::1")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
    }

    #[test]
    fn html_to_text_never_panics_on_broken_markup() {
        for html in [
            "<a\u{e9}",
            "<",
            "<p>x &\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9};",
            "&",
            "<!--",
            "<script>",
            "<h9>x",
        ] {
            let _ = html_to_text(html);
        }
        assert_eq!(html_to_text("a &amp b"), "a &amp b");
    }

    #[tokio::test]
    async fn loopback_private_and_other_schemes_are_refused_before_connecting() {
        let tool = WebFetchTool::new(WebFetchSettings::default()).unwrap();
        // A real server on loopback: the refusal must come from the guard, not a failed connect.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        for url in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://localhost:{port}/"),
            format!("http://[::1]:{port}/"),
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "http://10.0.0.1/".to_string(),
            format!("http://2130706433:{port}/"),
            format!("http://0x7f.1:{port}/"),
        ] {
            let err = tool.fetch(&url, 1000).await.unwrap_err();
            assert!(err.starts_with("refused"), "{url}: {err}");
        }
        for url in ["file:///etc/passwd", "ftp://example.com/", "gopher://x/"] {
            let err = tool.fetch(url, 1000).await.unwrap_err();
            assert!(err.contains("only http and https"), "{url}: {err}");
        }
    }

    /// A public-looking host that redirects to loopback is refused at the redirect: served by
    /// a loopback server the guard lets through only for the first hop (allowCidrs 127.0.0.2).
    #[tokio::test]
    async fn a_redirect_to_loopback_is_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/secret\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                let _ = s.write_all(body.as_bytes()).await;
            }
        });
        let settings = WebFetchSettings {
            guard: AddressGuard {
                allow_private: false,
                allow_cidrs: vec![Cidr::parse("127.0.0.2/32").unwrap()],
            },
            ..WebFetchSettings::default()
        };
        let tool = WebFetchTool::new(settings).unwrap();
        let err = tool.fetch(&format!("http://{addr}/start"), 1000).await.unwrap_err();
        assert!(
            err.contains("refused http://127.0.0.1:9/secret") && err.contains("loopback"),
            "{err}"
        );
    }

    #[test]
    fn html_becomes_readable_text() {
        let html = "<html><head><title>T &amp; U</title><style>x{}</style></head><body><h1>Hi</h1><p>a&nbsp;b &lt;c&gt;</p><script>evil()</script><ul><li>one</li><li>two</li></ul><!-- c --></body></html>";
        let text = html_to_text(html);
        assert!(text.starts_with("# T & U"), "{text}");
        assert!(text.contains("# Hi") && text.contains("a b <c>"), "{text}");
        assert!(text.contains("- one") && text.contains("- two"), "{text}");
        assert!(!text.contains("evil") && !text.contains("x{}"), "{text}");
    }
}
