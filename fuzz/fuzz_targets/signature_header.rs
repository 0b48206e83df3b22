#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flashsale_fuzzing::signature_header(data));
