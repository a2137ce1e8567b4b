//! Discarding receivers for `scripts/bench` (not part of the product):
//!
//!   bench_receiver hec              HTTP, answers every POST as HEC's "Success"
//!   bench_receiver syslog-tls DIR   TLS, reads and discards; writes DIR/ca.pem
//!   bench_receiver s3               HTTP, answers every PUT as S3 does (an ETag), checks nothing
//!
//! Each prints `listening on ADDR` and, on SIGTERM, what it received.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cf_audit_nozzle::tls::Pki;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    bytes: AtomicU64,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let counts = Arc::new(Counts::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    match args.get(1).map(String::as_str) {
        Some("hec") => {
            let c = Arc::clone(&counts);
            let app = axum::Router::new().route(
                "/services/collector/event",
                axum::routing::post(move |body: bytes::Bytes| {
                    let c = Arc::clone(&c);
                    async move {
                        c.requests.fetch_add(1, Ordering::Relaxed);
                        c.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                        r#"{"text":"Success","code":0}"#
                    }
                }),
            );
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        Some("s3") => {
            let c = Arc::clone(&counts);
            let app = axum::Router::new()
                .fallback(axum::routing::put(move |body: bytes::Bytes| {
                    let c = Arc::clone(&c);
                    async move {
                        c.requests.fetch_add(1, Ordering::Relaxed);
                        c.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                        ([("etag", "\"bench\"")], "")
                    }
                }))
                // Objects are up to --roll-bytes compressed; axum's default limit is 2 MB.
                .layer(axum::extract::DefaultBodyLimit::disable());
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        Some("syslog-tls") => {
            let dir = std::path::PathBuf::from(args.get(2).expect("syslog-tls DIR"));
            let pki = Pki::generate("benchCA", &["localhost"]).expect("certificates");
            std::fs::create_dir_all(&dir).expect("DIR");
            std::fs::write(dir.join("ca.pem"), &pki.ca_pem).expect("ca.pem");
            let certs = CertificateDer::pem_slice_iter(pki.server_cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("certificate");
            let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).expect("key");
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("protocols")
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("server config");
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let c = Arc::clone(&counts);
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, c) = (acceptor.clone(), Arc::clone(&c));
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        c.requests.fetch_add(1, Ordering::Relaxed);
                        let mut buf = vec![0u8; 1 << 16];
                        while let Ok(n) = tls.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            c.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    });
                }
            });
        }
        _ => {
            eprintln!("usage: bench_receiver hec | syslog-tls DIR | s3");
            std::process::exit(2);
        }
    }
    println!("listening on {addr}");
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
    term.recv().await;
    println!(
        "received {} bytes in {} requests/connections",
        counts.bytes.load(Ordering::Relaxed),
        counts.requests.load(Ordering::Relaxed)
    );
}
