//! The JSON Schema of a policy document (`schema/policy.schema.json`) and the Markdown
//! reference generated from it (`docs/policy-reference.md`), both from the raw form.

use super::Document;

/// The JSON Schema of a policy document, as committed in `schema/policy.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Document);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// The policy reference in Markdown, generated from the JSON Schema (`docs/policy-reference.md`),
/// so the reference cannot drift from what the parser accepts.
pub fn reference_markdown() -> String {
    use serde_json::Value;
    let schema: Value = serde_json::from_str(&json_schema()).unwrap_or_default();
    let one_line = |v: &Value| v.as_str().unwrap_or_default().replace('\n', " ");
    let anchor = |name: &str| name.to_ascii_lowercase();
    fn type_of(v: &Value, anchor: &dyn Fn(&str) -> String) -> String {
        if let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let name = r.rsplit('/').next().unwrap_or(r);
            return format!("[{name}](#{})", anchor(name));
        }
        if let Some(options) = v.get("anyOf").and_then(Value::as_array) {
            let types: Vec<String> = options
                .iter()
                .filter(|o| o.get("type") != Some(&Value::from("null")))
                .map(|o| type_of(o, anchor))
                .collect();
            return types.join(" or ");
        }
        if let Some(options) = v.get("oneOf").and_then(Value::as_array) {
            let consts: Vec<String> = options
                .iter()
                .filter_map(|o| o.get("const"))
                .map(|c| format!("`{}`", c.as_str().unwrap_or_default()))
                .collect();
            return format!("one of {}", consts.join(", "));
        }
        let base = match v.get("type") {
            Some(Value::Array(types)) => {
                types.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect::<Vec<_>>().join(" or ")
            }
            Some(Value::String(t)) => t.clone(),
            _ => "any".into(),
        };
        match base.as_str() {
            "array" => format!("list of {}", v.get("items").map(|i| type_of(i, anchor)).unwrap_or_default()),
            "object" if v.get("additionalProperties").is_some_and(Value::is_object) => {
                format!("map of {}", type_of(&v["additionalProperties"], anchor))
            }
            _ => base,
        }
    }
    let section = |out: &mut String, title: &str, def: &Value| {
        out.push_str(&format!("## {title}\n\n{}\n\n", one_line(&def["description"])));
        // An enum of values (each branch a `const`), or an externally tagged enum (each branch a
        // map with one key, the variant's, naming a kind): exactly one of the keys is given.
        if let Some(options) = def.get("oneOf").and_then(Value::as_array) {
            if options.iter().all(|o| o.get("const").is_some()) {
                out.push_str("| value | meaning |\n| --- | --- |\n");
                for o in options {
                    out.push_str(&format!(
                        "| `{}` | {} |\n",
                        o["const"].as_str().unwrap_or_default(),
                        one_line(&o["description"])
                    ));
                }
            } else {
                out.push_str("| kind (exactly one) | type | description |\n| --- | --- | --- |\n");
                for o in options {
                    for (name, field) in o["properties"].as_object().into_iter().flatten() {
                        out.push_str(&format!(
                            "| `{name}` | {} | {} |\n",
                            type_of(field, &anchor),
                            one_line(&o["description"])
                        ));
                    }
                }
            }
            out.push('\n');
            return;
        }
        let required: Vec<&str> =
            def["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        out.push_str("| field | type | required | description |\n| --- | --- | --- | --- |\n");
        for (name, field) in def["properties"].as_object().into_iter().flatten() {
            let mut description = one_line(&field["description"]);
            if let Some(pattern) = field.get("pattern").and_then(Value::as_str) {
                description.push_str(&format!(" Pattern: `{pattern}`."));
            }
            if let Some(default) = field.get("default") {
                description.push_str(&format!(" Default: `{default}`."));
            }
            out.push_str(&format!(
                "| `{name}` | {} | {} | {} |\n",
                type_of(field, &anchor),
                if required.contains(&name.as_str()) { "yes" } else { "no" },
                description.trim()
            ));
        }
        out.push('\n');
    };
    let mut out = String::from(
        "# Policy reference\n\nGenerated from the JSON Schema (`schema/policy.schema.json`) by `rotator schema --markdown`; \
         a test fails when this file is stale (regenerate with `UPDATE_EXPECT=1 cargo test --lib schema`).\n\n",
    );
    section(&mut out, "Policy", &schema);
    for (name, def) in schema["$defs"].as_object().into_iter().flatten() {
        section(&mut out, name, def);
    }
    out
}
