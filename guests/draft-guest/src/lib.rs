//! A guest built for `wasi:messaging@0.2.0-draft` alone, as someone else's
//! component would be: it imports nothing from our extension.
//!
//! `configure()` asks for `draft-in`. Each message whose data is `abandon` is
//! abandoned; every other message is forwarded to the channel named by its
//! `forward-to` metadata key (when present) and completed.

wit_bindgen::generate!({
    world: "wasi:messaging/messaging@0.2.0-draft",
    path: "../../wit",
    generate_all,
});

use exports::wasi::messaging::messaging_guest::Guest;
use wasi::messaging::consumer;
use wasi::messaging::messaging_types::{Client, Error, GuestConfiguration, Message};
use wasi::messaging::producer;

struct DraftGuest;

impl Guest for DraftGuest {
    fn configure() -> Result<GuestConfiguration, Error> {
        Ok(GuestConfiguration { channels: vec!["draft-in".into()], extensions: None })
    }

    fn handler(ms: Vec<Message>) -> Result<(), Error> {
        for m in ms {
            if m.data == b"abandon" {
                consumer::abandon_message(&m)?;
                continue;
            }
            let forward_to =
                m.metadata.as_ref().and_then(|md| md.iter().find(|(k, _)| k == "forward-to")).map(|(_, v)| v.clone());
            if let Some(channel) = forward_to {
                let copy = Message { data: m.data.clone(), format: m.format, metadata: None };
                producer::send(Client::connect("default")?, &channel, &[copy])?;
            }
            consumer::complete_message(&m)?;
        }
        Ok(())
    }
}

export!(DraftGuest);
