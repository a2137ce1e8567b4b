//! Which source to read (the RLP over gRPC, or the RLP Gateway over HTTPS)
//! and which envelope streams to ask it for; part of [`crate::config`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::cf::{CfArgs, PlatformHttp};
use crate::backoff::Backoff;
use crate::source::gateway::{GatewayConfig, GatewayEndpoints, IDLE_TIMEOUT};
use crate::source::rlp::RlpConfig;
use crate::source::uaa::{TokenProvider, UaaConfig};
use crate::source::{EnvelopeType, SourceConfig, Streams};
use crate::tls::ClientTls;

/// The validated source: what [`SourceSettings::build`] makes the running
/// source's configuration ([`SourceConfig`]) from.
#[derive(Clone, Debug)]
pub enum SourceSettings {
    Rlp(Box<RlpSettings>),
    Gateway(Box<GatewaySettings>),
}

/// The RLP source's validated options: [`RlpConfig`] with the paths of its
/// TLS files, read at build.
#[derive(Clone, Debug)]
pub struct RlpSettings {
    pub addr: String,
    pub server_name: String,
    /// `--rlp-ca`, `--rlp-cert`, `--rlp-key`.
    pub tls: RlpTlsFiles,
    pub streams: Streams,
    pub backoff: Backoff,
    pub idle_timeout: Option<Duration>,
}

/// The RLP's CA certificate, client certificate and client key files.
#[derive(Clone, Debug)]
pub struct RlpTlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl RlpTlsFiles {
    /// Reads and checks the files; the error names the options.
    pub fn read(&self) -> Result<ClientTls, String> {
        ClientTls::from_files(&self.ca, &self.cert, &self.key)
            .map_err(|e| format!("--rlp-ca/--rlp-cert/--rlp-key: {e}"))
    }
}

/// The gateway source's validated options: the gateway's settings with what
/// makes the platform HTTP client and the token provider, both made at build.
pub type GatewaySettings = GatewayConfig<EndpointSettings, PlatformHttp>;

/// Where the gateway and UAA are.
#[derive(Clone)]
pub enum EndpointSettings {
    /// Both given: the gateway's URL and the UAA client its token provider uses.
    Given { url: reqwest::Url, uaa: UaaConfig },
    /// Read from the CF API root at start: always [`GatewayEndpoints::Discover`].
    Discover(GatewayEndpoints),
}

impl std::fmt::Debug for EndpointSettings {
    // Written out for the URL, shown as `redact::parsed_url` does (a derived
    // `Debug` of a `Url` shows its password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Given { url, uaa } => f
                .debug_struct("Given")
                .field("url", &crate::redact::parsed_url(url))
                .field("uaa", uaa)
                .finish(),
            Self::Discover(e) => e.fmt(f),
        }
    }
}

impl SourceSettings {
    /// The running source's configuration: the RLP's TLS files read (a
    /// problem added to `errors`), or the gateway's clients made with
    /// `http`, the platform client (made from the settings' [`PlatformHttp`]).
    pub fn build(
        &self,
        errors: &mut Vec<String>,
        http: impl FnOnce(&PlatformHttp) -> Option<reqwest::Client>,
    ) -> Option<SourceConfig> {
        Some(match self {
            SourceSettings::Rlp(r) => SourceConfig::Rlp(Box::new(RlpConfig {
                addr: r.addr.clone(),
                server_name: r.server_name.clone(),
                tls: r.tls.read().map_err(|e| errors.push(e)).ok()?,
                streams: r.streams.clone(),
                backoff: r.backoff.clone(),
                idle_timeout: r.idle_timeout,
            })),
            SourceSettings::Gateway(g) => {
                let http = http(&g.http)?;
                let endpoints = match &g.endpoints {
                    EndpointSettings::Given { url, uaa } => GatewayEndpoints::Given {
                        url: url.clone(),
                        tokens: TokenProvider::with_limit(
                            uaa.clone(),
                            http.clone(),
                            g.max_response_bytes,
                        ),
                    },
                    EndpointSettings::Discover(e) => e.clone(),
                };
                SourceConfig::Gateway(Box::new(g.with(endpoints, http)))
            }
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// The Reverse Log Proxy over gRPC with mutual TLS (--rlp-*), inside the CF network.
    Rlp,
    /// The RLP Gateway (https://log-stream.<system domain>) with a UAA token; for `cf push`.
    Gateway,
}

#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Where envelopes come from.
    #[arg(long, env = "SOURCE", value_enum, default_value_t = SourceKind::Rlp)]
    pub source: SourceKind,
    /// RLP Gateway base URL (https://log-stream.<system domain>), when not discovered from --cf-api.
    #[arg(long, env = "GATEWAY_URL")]
    pub(crate) gateway_url: Option<String>,
    /// The largest RLP Gateway SSE line or event kept in memory, in bytes; a larger one is skipped and counted (source_malformed_frames).
    #[arg(long, env = "GATEWAY_MAX_FRAME_BYTES", default_value_t = crate::source::gateway::DEFAULT_MAX_FRAME_BYTES as u64, value_parser = clap::value_parser!(u64).range(1024..))]
    pub(crate) gateway_max_frame_bytes: u64,
    /// Seconds before an RLP Gateway stream's expected end (14 minutes) to open the next one, so the rollover leaves no gap; 0 turns the handover off.
    #[arg(long, env = "GATEWAY_HANDOVER", default_value_t = 30)]
    pub(crate) gateway_handover: u64,
    /// Source ids to read (app GUIDs or component ids such as doppler), comma separated; empty reads the whole firehose.
    #[arg(long, env = "SOURCE_IDS", value_delimiter = ',')]
    pub source_ids: Vec<String>,
    /// Envelope types to ask Loggregator for, comma separated.
    #[arg(
        long,
        env = "ENVELOPE_TYPES",
        value_enum,
        value_delimiter = ',',
        default_value = "log,counter,gauge,timer,event"
    )]
    pub(crate) envelope_types: Vec<EnvelopeType>,
    /// Only these counters (by name, comma separated); empty asks for every counter.
    #[arg(long, env = "COUNTER_NAMES", value_delimiter = ',')]
    pub counter_names: Vec<String>,
    /// Only gauges whose metric names are exactly one of these sets: sets
    /// separated by `;`, names within a set by `,` (e.g. `cpu,memory;subscriptions`).
    #[arg(long, env = "GAUGE_NAMES")]
    pub gauge_names: Option<String>,
    /// Loggregator's deterministic routing name: counters and gauges of one name always reach the same instance of a shard.
    #[arg(long, env = "DETERMINISTIC_NAME", default_value = "")]
    pub deterministic_name: String,
}

impl SourceArgs {
    /// The streams to subscribe to, with problems added to `errors`.
    pub fn streams(&self, errors: &mut Vec<String>, shard_id: &str) -> Streams {
        let mut source_ids: Vec<String> = Vec::new();
        for id in &self.source_ids {
            let id = id.trim();
            if !id.is_empty() && !source_ids.iter().any(|s| s == id) {
                source_ids.push(id.to_string());
            }
        }
        let mut types = self.envelope_types.clone();
        types.sort();
        types.dedup();
        if types.is_empty() {
            errors.push(
                "--envelope-types (ENVELOPE_TYPES) must name at least one of log, counter, gauge, timer, event"
                    .into(),
            );
        }
        if shard_id.is_empty() {
            errors.push("--shard-id (SHARD_ID) must not be empty".into());
        }
        let counter_names: Vec<String> = self
            .counter_names
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        let gauge_names: Vec<Vec<String>> = self
            .gauge_names
            .iter()
            .flat_map(|v| v.split(';'))
            .map(|set| {
                set.split(',')
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .collect::<Vec<_>>()
            })
            .filter(|set| !set.is_empty())
            .collect();
        let asked = |t| types.contains(&t);
        if !counter_names.is_empty() && !asked(EnvelopeType::Counter) {
            errors.push("--counter-names (COUNTER_NAMES) needs counter in --envelope-types".into());
        }
        if !gauge_names.is_empty() && !asked(EnvelopeType::Gauge) {
            errors.push("--gauge-names (GAUGE_NAMES) needs gauge in --envelope-types".into());
        }
        Streams {
            source_ids,
            types,
            counter_names,
            gauge_names,
            shard_id: shard_id.to_string(),
            deterministic_name: self.deterministic_name.clone(),
        }
    }

    /// The gateway source these options describe (no I/O: discovery happens
    /// when the source starts), with problems added to `errors`.
    pub fn gateway(
        &self,
        errors: &mut Vec<String>,
        cf: &CfArgs,
        streams: Streams,
    ) -> Option<GatewaySettings> {
        let before = errors.len();
        let gateway_url = super::cf::parse_url(
            errors,
            "--gateway-url (GATEWAY_URL)",
            self.gateway_url.as_deref(),
        );
        let cf_api = cf.cf_api_url(errors);
        let uaa_url = cf.uaa_url(errors);
        if cf_api.is_none() && cf.cf_api.is_none() {
            if self.gateway_url.is_none() {
                errors.push(
                    "--source gateway needs --gateway-url (GATEWAY_URL) or --cf-api (CF_API) to discover it"
                        .into(),
                );
            }
            if cf.uaa_url.is_none() {
                errors.push(
                    "--source gateway needs --uaa-url (UAA_URL) or --cf-api (CF_API) to discover it"
                        .into(),
                );
            }
        }
        let placeholder = reqwest::Url::parse("https://uaa.invalid").expect("static URL");
        let uaa = cf.uaa_config(errors, uaa_url.as_ref().unwrap_or(&placeholder));
        let max_body = cf.max_response_bytes(errors);
        if errors.len() > before {
            return None;
        }
        let uaa = uaa?;
        let endpoints = match (gateway_url, uaa_url, cf_api) {
            (Some(url), Some(_), _) => EndpointSettings::Given { url, uaa },
            (gateway_url, uaa_url, Some(cf_api)) => {
                EndpointSettings::Discover(GatewayEndpoints::Discover {
                    cf_api,
                    gateway_url,
                    uaa_url,
                    client_id: uaa.client_id,
                    client_secret: uaa.client_secret,
                })
            }
            _ => return None,
        };
        Some(GatewaySettings {
            endpoints,
            http: cf.platform_http(),
            streams,
            backoff: Backoff::default(),
            idle_timeout: IDLE_TIMEOUT,
            max_frame_bytes: usize::try_from(self.gateway_max_frame_bytes).unwrap_or(usize::MAX),
            handover: Duration::from_secs(self.gateway_handover),
            max_response_bytes: max_body,
        })
    }
}
