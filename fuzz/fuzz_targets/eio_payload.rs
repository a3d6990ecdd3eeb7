//! The Engine.IO payload decoder (polling and SSE POST bodies) on arbitrary bytes; what
//! decodes is re-encoded and must decode to the same packets.
#![no_main]
#![allow(dead_code)]
include!(concat!(env!("OUT_DIR"), "/tinysio.rs"));

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(packets) = eio::decode_payload(data, 512) else { return };
    let outs: Vec<_> = packets
        .iter()
        .filter_map(|p| match p {
            eio::Packet::Message(t) => Some(eio::Out::text(&format!("4{t}"))),
            eio::Packet::Binary(b) => Some(eio::Out::binary(b)),
            _ => None,
        })
        .collect();
    let again = eio::decode_payload(&eio::encode_payload(&outs), 512);
    if !outs.is_empty() {
        assert_eq!(again.map(|p| p.len()), Ok(outs.len()));
    }
});
