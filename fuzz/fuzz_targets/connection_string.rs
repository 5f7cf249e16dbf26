//! Connection strings; a parsed one never prints its key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(cs) = amqp_servicebus::ConnectionString::parse(text) {
        let _ = (cs.effective_port(), cs.fully_qualified_namespace(), cs.uses_tls());
        // The key (or signature) is never printed: the output is the same whatever it is.
        let mut other = cs.clone();
        match &mut other.credential {
            amqp_servicebus::Credential::SharedKey { key: secret, .. }
            | amqp_servicebus::Credential::SharedAccessSignature(secret) => secret.push_str("-other"),
            amqp_servicebus::Credential::Anonymous => {}
        }
        assert_eq!(format!("{cs:?}"), format!("{other:?}"), "the key is printed");
    }
});
