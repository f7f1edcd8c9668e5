//! plugins.toml: any text is either a valid manifest or an error naming the
//! file; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_model::manifest::Manifest;

fuzz_target!(|text: &str| {
    let path = std::path::Path::new("/fuzz/plugins.toml");
    if let Err(e) = Manifest::parse(path, text) {
        assert!(e.to_string().contains("/fuzz/plugins.toml"), "{e}");
    }
});
