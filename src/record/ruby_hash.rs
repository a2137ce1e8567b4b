//! Cloud Controller writes the request attributes of its `API` log lines with
//! Ruby's `Hash#inspect`: `{"name"=>"spring-music", "instances"=>1}` (Ruby
//! 3.4 writes `{"name" => "spring-music"}` and `{name: "spring-music"}`).
//! This reads that text into JSON so the record's `requestParameters` can be
//! queried like `/v3/audit_events`' `data.request`. Anything it does not
//! fully understand gives `None` and the caller keeps the raw text.
//!
//! Values are copied, never interpreted: `"PRIVATE DATA HIDDEN"` stays the
//! string it is.

use serde_json::{Map, Number, Value};

/// The JSON form of a Ruby hash or array literal as `inspect` writes it, or
/// `None` when the whole text is not one.
pub fn parse(text: &str) -> Option<Value> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    p.ws();
    let v = match p.peek()? {
        b'{' | b'[' => p.value()?,
        _ => return None,
    };
    p.ws();
    (p.i == p.s.len()).then_some(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

/// Deeper nesting than any request CC logs; stops a hostile line from
/// exhausting the stack.
const MAX_DEPTH: usize = 64;

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Option<Value> {
        self.ws();
        match self.peek()? {
            b'{' => self.hash(),
            b'[' => self.array(),
            b'"' => self.string().map(Value::String),
            b':' => {
                self.i += 1;
                if self.peek() == Some(b'"') {
                    return self.string().map(Value::String);
                }
                Some(Value::String(self.bare_word()?.to_string()))
            }
            b'-' | b'0'..=b'9' => self.number(),
            _ => match self.bare_word()? {
                "nil" => Some(Value::Null),
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
        }
    }

    fn nested(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH || self.peek()? != open {
            return None;
        }
        self.i += 1;
        self.ws();
        if self.peek()? == close {
            self.i += 1;
            self.depth -= 1;
            return Some(());
        }
        loop {
            item(self)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b if b == close => {
                    self.i += 1;
                    self.depth -= 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn hash(&mut self) -> Option<Value> {
        let mut map = Map::new();
        self.nested(b'{', b'}', |p| {
            p.ws();
            let key = p.key()?;
            let value = p.value()?;
            map.insert(key, value);
            Some(())
        })?;
        Some(Value::Object(map))
    }

    /// `"k"=>`, `"k" =>`, `:k=>`, `k:` or `"k":` (Ruby 3.4), or a number or
    /// `nil` as a key (written as JSON strings).
    fn key(&mut self) -> Option<String> {
        let key = match self.peek()? {
            b'"' => self.string()?,
            b':' => {
                self.i += 1;
                if self.peek() == Some(b'"') {
                    self.string()?
                } else {
                    self.bare_word()?.to_string()
                }
            }
            b'-' | b'0'..=b'9' => match self.number()? {
                Value::Number(n) => n.to_string(),
                _ => return None,
            },
            _ => self.bare_word()?.to_string(),
        };
        self.ws();
        if self.eat("=>") || self.eat(":") {
            Some(key)
        } else {
            None
        }
    }

    fn array(&mut self) -> Option<Value> {
        let mut items = Vec::new();
        self.nested(b'[', b']', |p| {
            items.push(p.value()?);
            Some(())
        })?;
        Some(Value::Array(items))
    }

    /// A Ruby identifier (symbol name, `nil`), possibly ending in `?` or `!`.
    fn bare_word(&mut self) -> Option<&str> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            self.i += 1;
        }
        if self.i > start && matches!(self.peek(), Some(b'?' | b'!')) {
            self.i += 1;
        }
        (self.i > start).then(|| std::str::from_utf8(&self.s[start..self.i]).ok())?
    }

    fn number(&mut self) -> Option<Value> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        if let Ok(i) = text.parse::<i64>() {
            return Some(Value::Number(i.into()));
        }
        if let Ok(u) = text.parse::<u64>() {
            return Some(Value::Number(u.into()));
        }
        Number::from_f64(text.parse::<f64>().ok()?).map(Value::Number)
    }

    /// A double-quoted Ruby string with `inspect`'s escapes.
    fn string(&mut self) -> Option<String> {
        self.i += 1; // the opening quote
        let mut out = Vec::new();
        loop {
            let b = self.peek()?;
            self.i += 1;
            match b {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'e' => out.push(0x1b),
                        b'a' => out.push(0x07),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0c),
                        b'v' => out.push(0x0b),
                        b's' => out.push(b' '),
                        b'0' => out.push(0),
                        b'u' => {
                            let c = self.unicode_escape()?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                        b'x' => {
                            let hex = self.s.get(self.i..self.i + 2)?;
                            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                            self.i += 2;
                            out.push(v);
                        }
                        // `\"`, `\\`, `\#` and any other escaped character stand for themselves.
                        other => out.push(other),
                    }
                }
                other => out.push(other),
            }
        }
    }

    /// `\uXXXX` or `\u{X...}` (after the `u`).
    fn unicode_escape(&mut self) -> Option<char> {
        let digits = if self.peek() == Some(b'{') {
            let end = self.s[self.i..].iter().position(|&b| b == b'}')?;
            let d = &self.s[self.i + 1..self.i + end];
            self.i += end + 1;
            d
        } else {
            let d = self.s.get(self.i..self.i + 4)?;
            self.i += 4;
            d
        };
        char::from_u32(u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use serde_json::json;

    fn check(text: &str, expected: Option<serde_json::Value>) {
        assert_eq!(parse(text), expected, "{text}");
    }

    #[test]
    fn hashes_as_cloud_controller_writes_them() {
        check(
            r#"{"name"=>"spring-music", "instances"=>1, "memory"=>512, "environment_json"=>"PRIVATE DATA HIDDEN"}"#,
            Some(
                json!({"name": "spring-music", "instances": 1, "memory": 512, "environment_json": "PRIVATE DATA HIDDEN"}),
            ),
        );
        // Ruby 3.4's inspect.
        check(
            r#"{"state" => "STARTED", "ports" => [8080, 9090], "health" => {"type" => "http"}}"#,
            Some(json!({"state": "STARTED", "ports": [8080, 9090], "health": {"type": "http"}})),
        );
        check(
            r#"{name: "a", :legacy=>:sym, "x"=>nil, "y"=>true, "z"=>-1.5, "w"=>false}"#,
            Some(
                json!({"name": "a", "legacy": "sym", "x": null, "y": true, "z": -1.5, "w": false}),
            ),
        );
        check(
            r#"{"command"=>"say \"hi\"\n\\ \u00e9 \u{1F600} \#{x}"}"#,
            Some(json!({"command": "say \"hi\"\n\\ é 😀 #{x}"})),
        );
        check("{}", Some(json!({})));
        check("[]", Some(json!([])));
    }

    #[test]
    fn anything_else_is_not_a_hash() {
        for text in [
            "",
            "applications:\n- name: a",
            r#"{"a"=>1"#,
            r#"{"a"=>1} trailing"#,
            r#"{"a"=>#<Object:0x0000>}"#,
            r#"{"a" 1}"#,
            "\"just a string\"",
            "42",
        ] {
            check(text, None);
        }
        let deep = "[".repeat(100) + &"]".repeat(100);
        check(&deep, None);
    }
}
