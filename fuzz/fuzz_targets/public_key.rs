#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keybridge_fuzz::public_key(data));
