//! A YAML stream cut into its documents by their markers, without parsing it, so the file
//! source parses again only the documents whose text changed.
//!
//! YAML 1.2 (§9.1, `c-forbidden`) makes a line that starts with `---` or `...` followed by a
//! space, a tab, a line break or the end of the stream a document marker wherever it is: no
//! scalar, block or flow, may hold such a line (a parser either ends the document there or
//! refuses the stream). So the text between two such lines is one document (or none: comments
//! only), and parsing it alone gives what parsing the whole stream gives for it, as long as
//! nothing in the stream reaches across documents. Directives (`%YAML`, `%TAG`) do, a byte
//! order mark starts a stream, and bare carriage returns are line breaks this cut does not
//! follow: a text with any of those is not cut (`None`), and is parsed whole. A cut document
//! that does not parse alone is the caller's cue to parse the whole text too (its error, with
//! the stream's own line numbers, is the one to report).

/// The documents of `text` in order, each a slice of it: from its `---` line (or the start of
/// the stream, or the line after a `...`) to the next marker, a `...` line included in the
/// document it ends. Together they are `text`, except for empty pieces. `None`: the text holds
/// something the cut does not follow (see the module's comment); parse it whole.
pub fn documents(text: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut at = 0;
    let bytes = text.as_bytes();
    while at < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[at..]).map_or(bytes.len(), |i| at + i + 1);
        let line = &bytes[at..end];
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if memchr::memchr(b'\r', body).is_some()
            || line.first() == Some(&b'%')
            || line.starts_with("\u{feff}".as_bytes())
        {
            return None;
        }
        match marker(body) {
            Some(Marker::Start) => {
                if at > start {
                    out.push(&text[start..at]);
                }
                start = at;
            }
            Some(Marker::End) => {
                out.push(&text[start..end]);
                start = end;
            }
            None => {}
        }
        at = end;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    Some(out)
}

enum Marker {
    /// `---`: a document starts on this line.
    Start,
    /// `...`: the document ends with this line.
    End,
}

/// Whether a line (without its line break) is a document marker.
fn marker(line: &[u8]) -> Option<Marker> {
    let kind = match line.get(..3)? {
        b"---" => Marker::Start,
        b"..." => Marker::End,
        _ => return None,
    };
    matches!(line.get(3), None | Some(b' ' | b'\t')).then_some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_at_markers_only() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("a: 1\n", &["a: 1\n"]),
            ("---\na: 1\n---\nb: 2\n", &["---\na: 1\n", "---\nb: 2\n"]),
            ("# head\na: 1\n--- \nb: 2", &["# head\na: 1\n", "--- \nb: 2"]),
            ("--- {a: 1}\n--- |\n  x\n", &["--- {a: 1}\n", "--- |\n  x\n"]),
            ("a: 1\n...\nb: 2\n", &["a: 1\n...\n", "b: 2\n"]),
            ("a: 1\n...\n---\nb: 2\n", &["a: 1\n...\n", "---\nb: 2\n"]),
            ("---\r\na: 1\r\n---\r\n", &["---\r\na: 1\r\n", "---\r\n"]),
            ("---\n---\n", &["---\n", "---\n"]),
            ("---", &["---"]),
            ("---\t# c\na: 1\n", &["---\t# c\na: 1\n"]),
        ];
        for (text, expected) in cases {
            assert_eq!(documents(text).as_deref(), Some(*expected), "{text:?}");
        }
    }

    #[test]
    fn dashes_that_are_not_markers_stay_in_their_document() {
        for text in [
            "a: |\n  ---\n  x\nb: 1\n",
            "a: \"x\n  --- y\"\n",
            "----\na: 1\n",
            "---x: 1\n",
            " ---\n",
            "a: [1,\n  ---]\n",
            "# ---\n",
            "....\n",
        ] {
            assert_eq!(documents(text), Some(vec![text]), "{text:?}");
        }
    }

    #[test]
    fn what_the_cut_does_not_follow_is_refused() {
        for text in [
            "%YAML 1.2\n---\na: 1\n",
            "a: 1\n...\n%TAG ! tag:x,2000:\n---\nb: 1\n",
            "\u{feff}a: 1\n",
            "---\n\u{feff}a: 1\n",
            "a: 1\rb: 2\n",
        ] {
            assert_eq!(documents(text), None, "{text:?}");
        }
    }
}
