//! The Socket.IO packet decoder on arbitrary text; what decodes is re-encoded and must decode
//! to the same packet.
#![no_main]
#![allow(dead_code)]
include!(concat!(env!("OUT_DIR"), "/tinysio.rs"));

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let limits = sio::Limits { attachments: 64, depth: 32 };
    let Ok(packet) = sio::decode(text, limits) else { return };
    let mut out = Vec::new();
    sio::encode(&packet, &mut out);
    let again = sio::decode(std::str::from_utf8(&out).unwrap(), limits);
    // A namespace holding a comma cannot round-trip (the comma ends it on the wire).
    if !packet.nsp.contains(',') {
        assert_eq!(again, Ok(packet), "{text:?} → {:?}", String::from_utf8_lossy(&out));
    }
});
