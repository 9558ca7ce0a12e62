#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| homelab_fuzz::logs(data));
