//! The vendored Firecracker API spec and request validation against it.

use serde_json::{Map, Value};
use thiserror::Error;

/// Firecracker v1.16.1's swagger document, verbatim.
pub const SPEC_YAML: &str = include_str!("../spec/firecracker-api.yaml");

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("The spec cannot be parsed: {0}")]
    Parse(String),
    #[error("Invalid request method and/or path: {method} {path}")]
    NoOperation { method: String, path: String },
    #[error("{0}")]
    Body(String),
    /// Only a `minimum`/`maximum` of the spec is broken. Firecracker's own
    /// deserializer does not check those: it takes the value and refuses it
    /// later with the message of the resource's validation.
    #[error("{0}")]
    Bound(String),
}

const BELOW: &str = " is below the minimum ";
const ABOVE: &str = " is above the maximum ";

/// A matched operation: the path template, the path parameters, the
/// operation object of the spec.
pub type Operation<'a> = (String, Vec<(String, String)>, &'a Value);

/// The parsed spec: paths with their operations, and the definitions.
#[derive(Debug, Clone)]
pub struct Spec {
    paths: Vec<(String, Map<String, Value>)>,
    definitions: Map<String, Value>,
}

fn to_json(v: serde_norway::Value) -> Value {
    use serde_norway::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64().map(Value::from).unwrap_or(Value::Null)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(s) => Value::Array(s.into_iter().map(to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s,
                        other => serde_norway::to_string(&other)
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => to_json(t.value),
    }
}

/// Does `path` match the template `tmpl` (`/drives/{drive_id}`)? Returns the
/// path parameters.
fn match_path(tmpl: &str, path: &str) -> Option<Vec<(String, String)>> {
    let (t, p): (Vec<&str>, Vec<&str>) = (tmpl.split('/').collect(), path.split('/').collect());
    if t.len() != p.len() {
        return None;
    }
    let mut params = Vec::new();
    for (a, b) in t.iter().zip(p.iter()) {
        if let Some(name) = a.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            if b.is_empty() {
                return None;
            }
            params.push((name.to_string(), b.to_string()));
        } else if a != b {
            return None;
        }
    }
    Some(params)
}

impl Spec {
    pub fn load() -> Result<Spec, SpecError> {
        Spec::parse(SPEC_YAML)
    }

    pub fn parse(yaml: &str) -> Result<Spec, SpecError> {
        let y: serde_norway::Value =
            serde_norway::from_str(yaml).map_err(|e| SpecError::Parse(e.to_string()))?;
        let doc = to_json(y);
        let paths = doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or_else(|| SpecError::Parse("no paths".into()))?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_object()?.clone())))
            .collect();
        let definitions = doc
            .get("definitions")
            .and_then(Value::as_object)
            .cloned()
            .ok_or_else(|| SpecError::Parse("no definitions".into()))?;
        Ok(Spec { paths, definitions })
    }

    /// The spec's version (`info.version`).
    pub fn version() -> String {
        SPEC_YAML
            .lines()
            .find_map(|l| l.trim().strip_prefix("version: "))
            .unwrap_or("unknown")
            .trim_matches('"')
            .to_string()
    }

    /// Finds the operation for a request; returns the path template and
    /// the path parameters.
    pub fn operation(&self, method: &str, path: &str) -> Result<Operation<'_>, SpecError> {
        let m = method.to_ascii_lowercase();
        for (tmpl, ops) in &self.paths {
            if let Some(params) = match_path(tmpl, path) {
                if let Some(op) = ops.get(&m) {
                    return Ok((tmpl.clone(), params, op));
                }
            }
        }
        Err(SpecError::NoOperation {
            method: method.to_uppercase(),
            path: path.into(),
        })
    }

    /// Validates a request: the operation exists, and the body (if the
    /// operation takes one) matches its schema. An operation without a body
    /// parameter must get no body.
    pub fn validate_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<String, SpecError> {
        let (tmpl, _params, op) = self.operation(method, path)?;
        let body_param = op
            .get("parameters")
            .and_then(Value::as_array)
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.get("in").and_then(Value::as_str) == Some("body"))
            });
        match (body_param, body) {
            (Some(p), Some(b)) => {
                let schema = p.get("schema").cloned().unwrap_or(Value::Null);
                self.validate(&schema, b, "").map_err(|e| {
                    if e.contains(BELOW) || e.contains(ABOVE) {
                        SpecError::Bound(e)
                    } else {
                        SpecError::Body(e)
                    }
                })?;
            }
            (Some(p), None) if p.get("required").and_then(Value::as_bool).unwrap_or(false) => {
                return Err(SpecError::Body("The request body is required".into()));
            }
            (None, Some(b)) if !b.is_null() => {
                return Err(SpecError::Body("This request takes no body".into()))
            }
            _ => {}
        }
        Ok(tmpl)
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> Result<&'a Value, String> {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r
                    .strip_prefix("#/definitions/")
                    .ok_or_else(|| format!("unsupported $ref {r}"))?;
                self.definitions
                    .get(name)
                    .ok_or_else(|| format!("unknown definition {name}"))
            }
            None => Ok(schema),
        }
    }

    /// Validates `v` against `schema` (a subset of JSON Schema as Swagger 2.0
    /// uses it: type, properties, required, enum, minimum, maximum, items,
    /// $ref). Unknown object fields are errors, as in Firecracker.
    pub fn validate(&self, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema)?;
        let here = if at.is_empty() {
            "body".to_string()
        } else {
            at.to_string()
        };
        let ty = schema.get("type").and_then(Value::as_str).unwrap_or(
            if schema.get("properties").is_some() {
                "object"
            } else {
                ""
            },
        );
        match ty {
            "object" => {
                let obj = v
                    .as_object()
                    .ok_or_else(|| format!("{here}: expected an object, got {v}"))?;
                let props = schema.get("properties").and_then(Value::as_object);
                if let Some(req) = schema.get("required").and_then(Value::as_array) {
                    for r in req.iter().filter_map(Value::as_str) {
                        if !obj.contains_key(r) {
                            return Err(format!("{here}: missing field `{r}`"));
                        }
                    }
                }
                if let Some(props) = props {
                    for (k, val) in obj {
                        match props.get(k) {
                            Some(s) => self.validate(
                                s,
                                val,
                                &format!(
                                    "{}{k}",
                                    if at.is_empty() {
                                        String::new()
                                    } else {
                                        format!("{at}.")
                                    }
                                ),
                            )?,
                            None => {
                                let expected: Vec<&str> =
                                    props.keys().map(String::as_str).collect();
                                return Err(format!(
                                    "{here}: unknown field `{k}`, expected one of `{}`",
                                    expected.join("`, `")
                                ));
                            }
                        }
                    }
                } else if let Some(ap) = schema.get("additionalProperties") {
                    for (k, val) in obj {
                        self.validate(ap, val, &format!("{here}.{k}"))?;
                    }
                }
            }
            "string" => {
                let s = v
                    .as_str()
                    .ok_or_else(|| format!("{here}: expected a string, got {v}"))?;
                if let Some(e) = schema.get("enum").and_then(Value::as_array) {
                    if !e.iter().any(|x| x.as_str() == Some(s)) {
                        let opts: Vec<String> = e.iter().map(|x| x.to_string()).collect();
                        return Err(format!(
                            "{here}: unknown variant `{s}`, expected one of {}",
                            opts.join(", ")
                        ));
                    }
                }
            }
            "integer" => {
                let n = v
                    .as_i64()
                    .ok_or_else(|| format!("{here}: expected an integer, got {v}"))?;
                if let Some(min) = schema.get("minimum").and_then(Value::as_i64) {
                    if n < min {
                        return Err(format!("{here}: {n}{BELOW}{min}"));
                    }
                }
                if let Some(max) = schema.get("maximum").and_then(Value::as_i64) {
                    if n > max {
                        return Err(format!("{here}: {n}{ABOVE}{max}"));
                    }
                }
                if n < 0 && schema.get("minimum").is_none() {
                    // Firecracker deserializes these into unsigned integers.
                    return Err(format!(
                        "{here}: invalid value {n}, expected an unsigned integer"
                    ));
                }
            }
            "number" => {
                v.as_f64()
                    .ok_or_else(|| format!("{here}: expected a number, got {v}"))?;
            }
            "boolean" => {
                v.as_bool()
                    .ok_or_else(|| format!("{here}: expected a boolean, got {v}"))?;
            }
            "array" => {
                let a = v
                    .as_array()
                    .ok_or_else(|| format!("{here}: expected an array, got {v}"))?;
                if let Some(items) = schema.get("items") {
                    for (i, x) in a.iter().enumerate() {
                        self.validate(items, x, &format!("{here}[{i}]"))?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Spec {
        Spec::load().expect("spec parses")
    }

    #[test]
    fn vendored_spec_is_v1_16_1_and_equals_the_shared_copy() {
        assert_eq!(Spec::version(), "1.16.1");
        let shared = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/spec/firecracker-api.yaml"
        );
        if let Ok(text) = std::fs::read_to_string(shared) {
            assert_eq!(
                text, SPEC_YAML,
                "crates/firecracker-api/spec differs from ../shared/spec"
            );
        }
    }

    #[test]
    fn finds_operations_and_path_params() {
        let s = spec();
        let (tmpl, params, _) = s.operation("PUT", "/drives/rootfs").expect("op");
        assert_eq!(tmpl, "/drives/{drive_id}");
        assert_eq!(params, vec![("drive_id".to_string(), "rootfs".to_string())]);
        assert!(s.operation("DELETE", "/drives/rootfs").is_err());
        assert!(s.operation("PUT", "/nope").is_err());
        assert!(s.operation("GET", "/").is_ok());
    }

    #[test]
    fn accepts_valid_bodies() {
        let s = spec();
        s.validate_request(
            "PUT",
            "/machine-config",
            Some(&json!({"vcpu_count": 2, "mem_size_mib": 1024})),
        )
        .expect("ok");
        s.validate_request(
            "PUT",
            "/boot-source",
            Some(&json!({"kernel_image_path": "/k", "boot_args": "console=ttyS0"})),
        )
        .expect("ok");
        s.validate_request("PUT", "/drives/rootfs", Some(&json!({"drive_id": "rootfs", "is_root_device": true, "path_on_host": "/r", "is_read_only": false}))).expect("ok");
        s.validate_request(
            "PUT",
            "/actions",
            Some(&json!({"action_type": "InstanceStart"})),
        )
        .expect("ok");
        s.validate_request("PATCH", "/vm", Some(&json!({"state": "Paused"})))
            .expect("ok");
        s.validate_request("GET", "/", None).expect("ok");
    }

    #[test]
    fn rejects_what_firecracker_rejects() {
        let s = spec();
        let bad = [
            ("PUT", "/machine-config", json!({"vcpu_count": 2})),
            (
                "PUT",
                "/machine-config",
                json!({"vcpu_count": 0, "mem_size_mib": 128}),
            ),
            (
                "PUT",
                "/machine-config",
                json!({"vcpu_count": 33, "mem_size_mib": 128}),
            ),
            (
                "PUT",
                "/machine-config",
                json!({"vcpu_count": "2", "mem_size_mib": 128}),
            ),
            (
                "PUT",
                "/machine-config",
                json!({"vcpu_count": 2, "mem_size_mib": 128, "turbo": true}),
            ),
            ("PUT", "/actions", json!({"action_type": "Reboot"})),
            ("PUT", "/drives/rootfs", json!({"drive_id": "rootfs"})),
            ("PUT", "/boot-source", json!({"boot_args": "x"})),
            ("PATCH", "/vm", json!({"state": "Stopped"})),
        ];
        for (m, p, b) in bad {
            assert!(
                s.validate_request(m, p, Some(&b)).is_err(),
                "{m} {p} {b} accepted"
            );
        }
        assert!(
            s.validate_request("PUT", "/actions", None).is_err(),
            "missing body"
        );
    }
}
