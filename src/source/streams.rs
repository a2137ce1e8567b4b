//! Which envelopes a source asks Loggregator for: the whole firehose or a
//! list of source ids, which envelope types, and how instances share the
//! stream. Selection is done by the server (RLP selectors, gateway query
//! parameters), never by subscribing to everything and filtering here.

use crate::proto::{
    CounterSelector, EventSelector, GaugeSelector, LogSelector, Selector, TimerSelector, selector,
};

/// A Loggregator envelope type, as the RLP selectors and the gateway's
/// query parameters name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum EnvelopeType {
    Log,
    Counter,
    Gauge,
    Timer,
    Event,
}

impl EnvelopeType {
    pub const ALL: [EnvelopeType; 5] = [
        EnvelopeType::Log,
        EnvelopeType::Counter,
        EnvelopeType::Gauge,
        EnvelopeType::Timer,
        EnvelopeType::Event,
    ];

    /// The gateway's query parameter (and the selector's name).
    pub fn as_str(self) -> &'static str {
        match self {
            EnvelopeType::Log => "log",
            EnvelopeType::Counter => "counter",
            EnvelopeType::Gauge => "gauge",
            EnvelopeType::Timer => "timer",
            EnvelopeType::Event => "event",
        }
    }

    fn selector(self) -> selector::Message {
        use selector::Message as M;
        match self {
            EnvelopeType::Log => M::Log(LogSelector {}),
            EnvelopeType::Counter => M::Counter(CounterSelector::default()),
            EnvelopeType::Gauge => M::Gauge(GaugeSelector::default()),
            EnvelopeType::Timer => M::Timer(TimerSelector {}),
            EnvelopeType::Event => M::Event(EventSelector {}),
        }
    }
}

/// The envelope stream a nozzle instance subscribes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Streams {
    /// App GUIDs or component ids; empty is the whole firehose.
    pub source_ids: Vec<String>,
    /// Envelope types asked for; never empty (a validated configuration).
    pub types: Vec<EnvelopeType>,
    /// Counter names to ask for (one selector each); empty asks for every counter.
    pub counter_names: Vec<String>,
    /// Gauge metric-name sets to ask for (one selector each; a gauge matches
    /// when its set of metric names equals the set); empty asks for every gauge.
    pub gauge_names: Vec<Vec<String>>,
    /// Subscriptions sharing a shard id split the stream between them; each
    /// distinct shard id gets its own full copy.
    pub shard_id: String,
    /// Loggregator's deterministic routing: counters and gauges of one name
    /// always go to the same subscription of a shard. Empty is off.
    pub deterministic_name: String,
}

impl Default for Streams {
    /// The whole firehose, every type, shard `cf-audit-nozzle`.
    fn default() -> Self {
        Self {
            source_ids: Vec::new(),
            types: EnvelopeType::ALL.to_vec(),
            counter_names: Vec::new(),
            gauge_names: Vec::new(),
            shard_id: "cf-audit-nozzle".to_string(),
            deterministic_name: String::new(),
        }
    }
}

impl Streams {
    /// The RLP selectors: every type once per source id (or once for all
    /// sources), as the gateway builds them from its query.
    pub fn selectors(&self) -> Vec<Selector> {
        let all = [String::new()];
        let ids: &[String] = if self.source_ids.is_empty() {
            &all
        } else {
            &self.source_ids
        };
        ids.iter()
            .flat_map(|id| {
                self.messages().into_iter().map(move |m| Selector {
                    source_id: id.clone(),
                    message: Some(m),
                })
            })
            .collect()
    }

    /// The selector messages for one source id: each type once, except
    /// counters and gauges narrowed by name (one selector per name or set).
    fn messages(&self) -> Vec<selector::Message> {
        use selector::Message as M;
        self.types
            .iter()
            .flat_map(|t| match t {
                EnvelopeType::Counter if !self.counter_names.is_empty() => self
                    .counter_names
                    .iter()
                    .map(|n| M::Counter(CounterSelector { name: n.clone() }))
                    .collect(),
                EnvelopeType::Gauge if !self.gauge_names.is_empty() => self
                    .gauge_names
                    .iter()
                    .map(|names| {
                        M::Gauge(GaugeSelector {
                            names: names.clone(),
                        })
                    })
                    .collect(),
                t => vec![t.selector()],
            })
            .collect()
    }

    pub(crate) fn gateway_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for t in &self.types {
            match t {
                EnvelopeType::Counter if !self.counter_names.is_empty() => {
                    for n in &self.counter_names {
                        q.append_pair("counter.name", n);
                    }
                }
                EnvelopeType::Gauge if !self.gauge_names.is_empty() => {
                    for names in &self.gauge_names {
                        q.append_pair("gauge.name", &names.join(","));
                    }
                }
                t => {
                    q.append_key_only(t.as_str());
                }
            }
        }
        for id in &self.source_ids {
            q.append_pair("source_id", id);
        }
        if !self.shard_id.is_empty() {
            q.append_pair("shard_id", &self.shard_id);
        }
        if !self.deterministic_name.is_empty() {
            q.append_pair("deterministic_name", &self.deterministic_name);
        }
        q.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_repeat_every_type_per_source_id() {
        let s = Streams {
            source_ids: vec!["app-1".into(), "app-2".into()],
            types: vec![EnvelopeType::Log, EnvelopeType::Event],
            ..Streams::default()
        };
        let got: Vec<(String, bool, bool)> = s
            .selectors()
            .into_iter()
            .map(|sel| {
                let m = sel.message.unwrap();
                (
                    sel.source_id,
                    matches!(m, selector::Message::Log(_)),
                    matches!(m, selector::Message::Event(_)),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("app-1".to_string(), true, false),
                ("app-1".to_string(), false, true),
                ("app-2".to_string(), true, false),
                ("app-2".to_string(), false, true),
            ]
        );
        assert_eq!(Streams::default().selectors().len(), 5);
    }

    #[test]
    fn counter_and_gauge_names_narrow_their_selectors_and_query() {
        let s = Streams {
            source_ids: vec!["doppler".into()],
            types: vec![
                EnvelopeType::Log,
                EnvelopeType::Counter,
                EnvelopeType::Gauge,
            ],
            counter_names: vec!["dropped".into(), "egress".into()],
            gauge_names: vec![
                vec!["cpu".into(), "memory".into()],
                vec!["subscriptions".into()],
            ],
            ..Streams::default()
        };
        use selector::Message as M;
        let got: Vec<String> = s
            .selectors()
            .into_iter()
            .map(|sel| match sel.message.unwrap() {
                M::Log(_) => format!("{}:log", sel.source_id),
                M::Counter(c) => format!("{}:counter={}", sel.source_id, c.name),
                M::Gauge(g) => format!("{}:gauge={}", sel.source_id, g.names.join("+")),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                "doppler:log",
                "doppler:counter=dropped",
                "doppler:counter=egress",
                "doppler:gauge=cpu+memory",
                "doppler:gauge=subscriptions"
            ]
        );
        assert_eq!(
            s.gateway_query(),
            "log&counter.name=dropped&counter.name=egress&gauge.name=cpu%2Cmemory&gauge.name=subscriptions&source_id=doppler&shard_id=cf-audit-nozzle"
        );
    }

    #[test]
    fn gateway_query_names_types_ids_and_sharding() {
        let s = Streams {
            source_ids: vec!["a b".into()],
            types: vec![EnvelopeType::Log, EnvelopeType::Gauge],
            shard_id: "audit&1".into(),
            deterministic_name: "n".into(),
            ..Streams::default()
        };
        assert_eq!(
            s.gateway_query(),
            "log&gauge&source_id=a+b&shard_id=audit%261&deterministic_name=n"
        );
        assert_eq!(
            Streams::default().gateway_query(),
            "log&counter&gauge&timer&event&shard_id=cf-audit-nozzle"
        );
    }
}
