//! The `stdout` sink: one JSON record per line.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::{Batch, Sink, SinkError, SinkFailure};
use crate::record::{EncodeContext, Record};

pub(crate) struct StdoutSink {
    ctx: EncodeContext,
    out: tokio::io::Stdout,
    buf: Vec<u8>,
}

impl StdoutSink {
    pub fn new(ctx: EncodeContext) -> Self {
        Self {
            ctx,
            out: tokio::io::stdout(),
            buf: Vec::with_capacity(1 << 16),
        }
    }
}

/// Encodes a batch as JSON lines into `buf` (cleared first).
pub(crate) fn encode_lines(ctx: &EncodeContext, batch: &[Arc<Record>], buf: &mut Vec<u8>) {
    buf.clear();
    for record in batch {
        record.write_json(ctx, buf);
        buf.push(b'\n');
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &str {
        "stdout"
    }

    async fn write(&mut self, batch: Batch<'_>) -> Result<u64, SinkFailure> {
        encode_lines(&self.ctx, batch.records, &mut self.buf);
        let io = |source| SinkError::Io {
            path: "<stdout>".to_string(),
            source: Arc::new(source),
        };
        self.out.write_all(&self.buf).await.map_err(io)?;
        self.out.flush().await.map_err(io)?;
        Ok(batch.records.len() as u64)
    }

    async fn roll(&mut self) -> Result<u64, SinkFailure> {
        Ok(0)
    }
}
