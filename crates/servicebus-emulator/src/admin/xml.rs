//! XML as the administration API needs it: a small tree read from a request body (elements
//! by local name, namespaces and prefixes set aside, as every client spells them its own way),
//! and escaping for what is written back.

use quick_xml::events::Event;

/// The deepest nesting a request may have: an entity description is five levels deep.
const MAX_DEPTH: usize = 32;

/// An element: its local name, attributes (local names), text, and child elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Element {
    pub(super) name: String,
    pub(super) attributes: Vec<(String, String)>,
    pub(super) text: String,
    pub(super) children: Vec<Element>,
}

impl Element {
    /// The first child named `name`.
    pub(super) fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The text of the first child named `name`, trimmed.
    pub(super) fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    /// An attribute's value, by local name (`i:type` is `type`).
    pub(super) fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The `i:type` of the element without its prefix (`d6p1:string` is `string`).
    pub(super) fn xsi_type(&self) -> Option<&str> {
        self.attribute("type").map(|t| t.rsplit(':').next().unwrap_or(t))
    }
}

/// Parses a document into its root element.
pub(super) fn parse(text: &str) -> Result<Element, String> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("the XML is malformed at byte {}: {e}", reader.buffer_position()))?;
        match event {
            Event::Start(_) | Event::Empty(_) if stack.len() >= MAX_DEPTH => {
                return Err(format!("the XML nests deeper than {MAX_DEPTH} elements"));
            }
            Event::Start(start) => stack.push(element(&start)?),
            Event::Empty(start) => {
                let e = element(&start)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(e),
                    None => return Ok(e),
                }
            }
            Event::End(_) => {
                let done = stack.pop().ok_or("the XML closes an element it never opened")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return Ok(done),
                }
            }
            Event::Text(t) => {
                if let Some(current) = stack.last_mut() {
                    current.text.push_str(&t.unescape().map_err(|e| format!("the XML has a bad escape: {e}"))?);
                }
            }
            Event::CData(t) => {
                if let Some(current) = stack.last_mut() {
                    current.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::Eof => return Err("the XML ends before its root element does".into()),
            _ => {}
        }
    }
}

fn element(start: &quick_xml::events::BytesStart<'_>) -> Result<Element, String> {
    let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
    let mut attributes = Vec::new();
    for a in start.attributes() {
        let a = a.map_err(|e| format!("the XML has a malformed attribute: {e}"))?;
        let value = a.unescape_value().map_err(|e| format!("the XML has a bad escape: {e}"))?.into_owned();
        attributes.push((String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned(), value));
    }
    Ok(Element { name, attributes, text: String::new(), children: Vec::new() })
}

/// `text` with `&`, `<`, `>`, `"` and `'` escaped, for element text and attribute values.
pub(super) fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_read_by_local_name_whatever_their_prefix() {
        let doc = r#"<?xml version="1.0"?><ns0:entry xmlns:ns0="http://www.w3.org/2005/Atom"><ns0:content type="application/xml">
            <QueueDescription xmlns:i="x"><LockDuration>PT30S</LockDuration><Note>a &amp; b</Note><Empty/>
            <Filter i:type="d2p1:SqlFilter"><SqlExpression><![CDATA[a < 1]]></SqlExpression></Filter></QueueDescription>
            </ns0:content></ns0:entry>"#;
        let root = parse(doc).unwrap();
        assert_eq!(root.name, "entry");
        let content = root.child("content").unwrap();
        assert_eq!(content.attribute("type"), Some("application/xml"));
        let q = content.child("QueueDescription").unwrap();
        assert_eq!(q.text_of("LockDuration"), Some("PT30S"));
        assert_eq!(q.text_of("Note"), Some("a & b"));
        assert_eq!(q.text_of("Empty"), Some(""));
        let filter = q.child("Filter").unwrap();
        assert_eq!((filter.xsi_type(), filter.text_of("SqlExpression")), (Some("SqlFilter"), Some("a < 1")));
    }

    #[test]
    fn malformed_and_deep_documents_are_refused() {
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("<a>").unwrap_err().contains("ends before"));
        assert!(parse(&"<a>".repeat(40)).unwrap_err().contains("deeper than"));
        assert_eq!(escape("<'&\">"), "&lt;&apos;&amp;&quot;&gt;");
    }
}
