//! Test peers for the gateway source: a test UAA (client-credentials tokens
//! that expire on tokio's clock) and a test RLP Gateway whose every
//! connection plays a script (bytes, pauses, stalls), so a test can split
//! frames across reads, stall, send garbage or close at will. One HTTP/1.1
//! listener on 127.0.0.1 serves both.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cf_audit_nozzle::proto::Envelope;
use cf_audit_nozzle::source::emulator::gateway::{
    HttpRequest, SSE_CLOSING, SSE_HEAD, http_response, read_request, sse_batch_frame,
};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::time::Instant;

/// One step of a scripted gateway connection.
#[derive(Clone, Debug)]
pub enum Step {
    /// Write these bytes (and flush).
    Write(Vec<u8>),
    /// Write these bytes in pieces of this size, yielding between them, so
    /// the client reads them in many parts.
    Trickle(Vec<u8>, usize),
    Sleep(Duration),
    /// Hold the connection open, sending nothing, until the client leaves.
    Stall,
}

/// The usual stream: the SSE head, one frame per batch, then `closing`.
pub fn stream_of(batches: &[Vec<Envelope>]) -> Vec<Step> {
    let mut steps = vec![Step::Write(SSE_HEAD.to_vec())];
    steps.extend(batches.iter().map(|b| Step::Write(sse_batch_frame(b))));
    steps.push(Step::Write(SSE_CLOSING.to_vec()));
    steps
}

/// A request the peers saw, with when (tokio's clock).
#[derive(Clone, Debug)]
pub struct Seen {
    pub request: HttpRequest,
    pub at: Instant,
    /// For gateway requests: whether the token was accepted.
    pub accepted: bool,
}

pub type Script = dyn Fn(usize, &HttpRequest) -> Vec<Step> + Send + Sync;

pub struct Peers {
    pub addr: SocketAddr,
    pub client_id: String,
    pub client_secret: String,
    /// Lifetime of the tokens the test UAA issues.
    pub token_lifetime: Duration,
    /// Issued tokens and their expiry.
    tokens: Mutex<HashMap<String, Instant>>,
    /// While set, the gateway refuses every token with 404.
    pub deny: AtomicBool,
    gateway: Mutex<Vec<Seen>>,
    uaa: Mutex<Vec<Seen>>,
    /// Connections whose token was accepted, numbering the script's calls.
    accepted: AtomicU64,
    script: Box<Script>,
}

impl Peers {
    /// Starts the peers; `script(n, request)` plays the `n`th accepted
    /// gateway connection (from 0).
    pub async fn start(
        token_lifetime: Duration,
        script: impl Fn(usize, &HttpRequest) -> Vec<Step> + Send + Sync + 'static,
    ) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peers = Arc::new(Self {
            addr: listener.local_addr().unwrap(),
            client_id: "audit-nozzle".to_string(),
            client_secret: "p@ss w&rd=+%/é;".to_string(),
            token_lifetime,
            tokens: Mutex::new(HashMap::new()),
            deny: AtomicBool::new(false),
            gateway: Mutex::new(Vec::new()),
            uaa: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            script: Box::new(script),
        });
        let serving = Arc::clone(&peers);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let peers = Arc::clone(&serving);
                tokio::spawn(async move { peers.serve(tcp).await });
            }
        });
        peers
    }

    pub fn url(&self) -> reqwest::Url {
        reqwest::Url::parse(&format!("http://{}", self.addr)).unwrap()
    }

    pub fn gateway_requests(&self) -> Vec<Seen> {
        self.gateway.lock().unwrap().clone()
    }

    pub fn uaa_requests(&self) -> Vec<Seen> {
        self.uaa.lock().unwrap().clone()
    }

    pub fn refused(&self) -> usize {
        self.gateway_requests()
            .iter()
            .filter(|s| !s.accepted)
            .count()
    }

    fn token_valid(&self, authorization: Option<&str>) -> bool {
        // The real gateway strips a lowercase "bearer" only.
        let Some(token) = authorization.and_then(|a| a.strip_prefix("bearer ")) else {
            return false;
        };
        let tokens = self.tokens.lock().unwrap();
        !self.deny.load(Ordering::SeqCst)
            && tokens.get(token).is_some_and(|exp| Instant::now() < *exp)
    }

    async fn serve(&self, tcp: tokio::net::TcpStream) {
        let (read, mut write) = tcp.into_split();
        let mut reader = BufReader::new(read);
        let Some(request) = read_request(&mut reader).await else {
            return;
        };
        let at = Instant::now();
        let steps = match (request.method.as_str(), request.path()) {
            ("POST", "/oauth/token") => {
                let reply = self.token_reply(&request);
                self.uaa.lock().unwrap().push(Seen {
                    request,
                    at,
                    accepted: true,
                });
                vec![Step::Write(reply)]
            }
            ("GET", "/v2/read") => {
                let accepted = self.token_valid(request.header("authorization"));
                self.gateway.lock().unwrap().push(Seen {
                    request: request.clone(),
                    at,
                    accepted,
                });
                if accepted {
                    let n = self.accepted.fetch_add(1, Ordering::SeqCst) as usize;
                    (self.script)(n, &request)
                } else {
                    let body = br#"{"error":"not_found","message":"resource not found"}"#;
                    vec![Step::Write(http_response(404, "application/json", body))]
                }
            }
            _ => vec![Step::Write(http_response(404, "text/plain", b"no"))],
        };
        for step in steps {
            match step {
                Step::Write(bytes) => {
                    if write.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Step::Trickle(bytes, piece) => {
                    for chunk in bytes.chunks(piece) {
                        if write.write_all(chunk).await.is_err() {
                            return;
                        }
                        tokio::task::yield_now().await;
                    }
                }
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Stall => {
                    // Until the client closes (reading returns EOF or fails).
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 64];
                    while matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {}
                    return;
                }
            }
        }
        let _ = write.shutdown().await;
    }

    /// The UAA client-credentials grant: the form must carry exactly our
    /// client id and secret (after form decoding).
    fn token_reply(&self, request: &HttpRequest) -> Vec<u8> {
        let form: HashMap<String, String> = form_urlencoded::parse(&request.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let ok = request.header("content-type") == Some("application/x-www-form-urlencoded")
            && form.get("grant_type").map(String::as_str) == Some("client_credentials")
            && form.get("client_id") == Some(&self.client_id)
            && form.get("client_secret") == Some(&self.client_secret);
        if !ok {
            let body = br#"{"error":"unauthorized","error_description":"Bad credentials"}"#;
            return http_response(401, "application/json", body);
        }
        let mut tokens = self.tokens.lock().unwrap();
        let token = format!("token-{}", tokens.len() + 1);
        tokens.insert(token.clone(), Instant::now() + self.token_lifetime);
        let body = serde_json::json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.token_lifetime.as_secs(),
            "scope": "doppler.firehose",
            "jti": "x",
        })
        .to_string();
        http_response(200, "application/json", body.as_bytes())
    }
}
