//! TLS interception: the CA that mints a certificate per intercepted host ([`ca`]).
//! The proxy terminates the client's TLS with that certificate and opens its own TLS
//! connection to the origin, as proxy.py does with `--ca-key-file`, `--ca-cert-file` and
//! `--ca-signing-key-file`.

pub mod ca;
