//! Writes the fuzz targets' seed corpora (`scripts/fuzz` runs it first):
//! envelope batches from the emulator's traffic mix, Cloud Controller
//! message texts, and command lines.
//!
//!   cargo run --example fuzz_seeds -- DIR

use cf_audit_nozzle::proto::EnvelopeBatch;
use cf_audit_nozzle::source::emulator::traffic::Traffic;
use prost::Message;

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: fuzz_seeds DIR"));
    let write = |target: &str, name: String, bytes: &[u8]| {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), bytes)
    };
    let mut traffic = Traffic::new(7);
    for (i, n) in [1, 2, 5, 20].into_iter().enumerate() {
        let batch = EnvelopeBatch {
            batch: traffic.batch(n),
        };
        write(
            "envelope_batch",
            format!("traffic-{i}"),
            &batch.encode_to_vec(),
        )?;
    }
    let guid = "cdabc600-0b73-48e1-b7d2-26af2c63f933";
    let texts = [
        format!("Created app with guid {guid}"),
        format!(
            "Updated app with guid {guid} ({{\"name\"=>\"spring-music\", \"instances\"=>1, \"environment_json\"=>\"PRIVATE DATA HIDDEN\"}})"
        ),
        format!("Deleted app with guid {guid}"),
        format!("Creating build for app with guid {guid}"),
        format!("Restarted app with guid {guid}"),
        "Started GET \"/v3/apps\" for user: admin".to_string(),
    ];
    for (i, t) in texts.iter().enumerate() {
        write("cc_message", format!("text-{i}"), t.as_bytes())?;
    }
    let lines = [
        "--rlp-addr\0rlp:8082\0--sink\0file,syslog\0--syslog-addr\0siem:6514",
        "--sink\0http\0--http-url\0https://splunk:8088\0--hec-token\0t",
        "--health-addr\0off\0--batch-max-bytes\x001024\0--gzip-level\x009",
    ];
    for (i, l) in lines.iter().enumerate() {
        write("config", format!("args-{i}"), l.as_bytes())?;
    }
    Ok(())
}
