//! Any bytes as a disk-buffer segment found at start-up (torn, damaged or
//! from another program): the replay keeps a prefix of whole, CRC-checked
//! records and rebuilds each or says why not. Nothing may panic, and what
//! it keeps frames back to exactly the bytes it kept.
#![no_main]

use cf_audit_nozzle::sink::buffer::{replay_segment, segment_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (records, kept) = replay_segment(data);
    assert!(kept as usize <= data.len());
    if records.iter().all(|r| r.is_ok()) {
        let rebuilt: Vec<_> = records.into_iter().map(|r| r.unwrap()).collect();
        // Records that decode re-encode to a segment that replays the same.
        let again = segment_bytes(&rebuilt);
        let (twice, kept_again) = replay_segment(&again);
        assert_eq!(kept_again as usize, again.len());
        assert_eq!(twice.len(), rebuilt.len());
    }
});
