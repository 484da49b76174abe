//! JSON schemas of the message types, normalised for the TypeScript side:
//! integer formats become explicit bounds (a `u64` is capped at 2^53 − 1, the
//! largest integer a JavaScript number holds exactly), and every tagged enum
//! names its tag as a discriminator so the validator dispatches on it.

use sandbox_protocol as proto;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

/// `messages`: message name → `{"$ref": …}`; `definitions`: every named schema.
pub fn messages() -> (Value, Value) {
    let mut gen = SchemaSettings::draft07().into_generator();
    let mut messages = Map::new();
    for (name, schema) in proto::message_schemas(&mut gen) {
        messages.insert(name.to_string(), normalise(schema.to_value()));
    }
    let category = gen.subschema_for::<proto::addr::Category>();
    messages.insert("Category".into(), normalise(category.to_value()));
    let definitions: Map<String, Value> = gen.definitions().iter().map(|(k, v)| (k.clone(), normalise(v.clone()))).collect();
    (Value::Object(messages), Value::Object(sorted(definitions)))
}

fn sorted(m: Map<String, Value>) -> Map<String, Value> {
    let mut entries: Vec<_> = m.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.into_iter().collect()
}

fn bounds(format: &str) -> Option<(Value, Value)> {
    let safe = proto::JS_SAFE_MAX;
    Some(match format {
        "uint8" => (json!(0), json!(u8::MAX)),
        "uint16" => (json!(0), json!(u16::MAX)),
        "uint32" => (json!(0), json!(u32::MAX)),
        "uint64" | "uint" => (json!(0), json!(safe)),
        "int8" => (json!(i8::MIN), json!(i8::MAX)),
        "int16" => (json!(i16::MIN), json!(i16::MAX)),
        "int32" => (json!(i32::MIN), json!(i32::MAX)),
        "int64" | "int" => (json!(-(safe as i64)), json!(safe)),
        _ => return None,
    })
}

/// Rewrites one schema node and everything below it.
fn normalise(mut v: Value) -> Value {
    walk(&mut v);
    v
}

fn walk(v: &mut Value) {
    match v {
        Value::Object(m) => {
            // A string-valued `format` is the keyword; an object under that key is a property named "format".
            if let Some(Value::String(format)) = m.get("format").cloned() {
                m.remove("format");
                match bounds(&format) {
                    Some((min, max)) => {
                        m.entry("minimum").or_insert(min);
                        let keep = m.get("maximum").and_then(Value::as_f64).is_some_and(|cur| max.as_f64().is_some_and(|new| cur <= new));
                        if !keep {
                            m.insert("maximum".into(), max);
                        }
                    }
                    // float/double: any JSON number.
                    None if format == "float" || format == "double" => {}
                    None => {
                        m.insert("format".into(), Value::String(format));
                    }
                }
            }
            // Integer schemas without a format (a const-bounded type) still need the JS cap.
            if m.get("type") == Some(&json!("integer")) {
                let safe = json!(proto::JS_SAFE_MAX);
                if m.get("maximum").and_then(Value::as_u64).is_some_and(|cur| cur > proto::JS_SAFE_MAX) {
                    m.insert("maximum".into(), safe);
                }
            }
            for (_, child) in m.iter_mut() {
                walk(child);
            }
            if let Some(tag) = tag_of(m) {
                m.insert("discriminator".into(), json!({ "propertyName": tag }));
            }
        }
        Value::Array(a) => a.iter_mut().for_each(walk),
        _ => {}
    }
}

/// The property every `oneOf` branch fixes with a `const`, if there is one.
fn tag_of(m: &Map<String, Value>) -> Option<String> {
    let branches = m.get("oneOf")?.as_array()?;
    let first = branches.first()?.get("properties")?.as_object()?;
    let tag = first.iter().find(|(_, p)| p.get("const").is_some())?.0.clone();
    branches
        .iter()
        .all(|b| b.pointer(&format!("/properties/{tag}/const")).is_some() && b.get("required").and_then(Value::as_array).is_some_and(|r| r.contains(&json!(tag))))
        .then_some(tag)
}
