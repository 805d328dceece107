//! A CSR as the CA receives it (`CertifyRequest.csr_der`): `VerifiedCsr::parse` (DER,
//! algorithm allow-list, RSA size, self-signature, requested URI SANs).
#![no_main]
libfuzzer_sys::fuzz_target!(
    init: weft_fuzz::seeds_then_exit(weft_fuzz::csrs),
    |data: &[u8]| {
        let _ = weft_certs::csr::VerifiedCsr::parse(data);
    }
);
