#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keybridge_fuzz::key_log(data));
