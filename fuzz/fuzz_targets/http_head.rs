//! The HTTP request-head parser, and the query decoder, on arbitrary bytes.
#![no_main]
#![allow(dead_code)]
include!(concat!(env!("OUT_DIR"), "/tinysio.rs"));

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let limits = http::Limits {
        max_head: 8192,
        max_line: 4096,
        max_body: 1_000_000,
        header_timeout: std::time::Duration::from_secs(1),
        idle_timeout: std::time::Duration::from_secs(1),
    };
    if let Ok(Some((req, _))) = http::parse_head(data, &limits) {
        let _ = req.params(["EIO", "transport", "sid"]);
        let _ = http::cors(req.header("origin"), req.header("host"), &["*".to_string()]);
    }
});
