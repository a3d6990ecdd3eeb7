//! Makes main.rs includable by the fuzz targets: a copy without its file-level `//!` block
//! (an inner doc comment cannot follow the target's own items), with index.html beside it.
use std::{env, fs, path::Path};

fn main() {
    let out = env::var("OUT_DIR").unwrap();
    let source = fs::read_to_string("../main.rs").unwrap();
    let body: String = source.lines().skip_while(|l| l.starts_with("//!")).collect::<Vec<_>>().join("\n");
    fs::write(Path::new(&out).join("tinysio.rs"), body).unwrap();
    fs::copy("../index.html", Path::new(&out).join("index.html")).unwrap();
    println!("cargo:rerun-if-changed=../main.rs");
    println!("cargo:rerun-if-changed=../index.html");
}
