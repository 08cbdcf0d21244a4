#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keybridge_fuzz::device_state(data));
