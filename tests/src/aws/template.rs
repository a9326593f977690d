//! Reads `template.yaml`, tolerating CloudFormation's short-form tags
//! (`!Ref`, `!GetAtt`, `!Sub`, ...), and resolves the intrinsic functions
//! the hub uses against the resources an emulator stack created.

use anyhow::{anyhow, bail, Context, Result};
use serde_yaml::value::TaggedValue;
use serde_yaml::Value;
use std::collections::HashMap;
use std::path::PathBuf;

/// The repository's `template.yaml`.
pub fn template_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("template.yaml")
}

#[derive(Debug, Clone)]
pub struct Template {
    pub root: Value,
}

/// One resource of the template.
#[derive(Debug, Clone)]
pub struct Resource<'a> {
    pub logical_id: &'a str,
    pub kind: &'a str,
    pub properties: &'a Value,
    pub body: &'a Value,
}

impl Template {
    pub fn load() -> Result<Self> {
        let path = template_path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self> {
        let root: Value = serde_yaml::from_str(text).context("parsing template.yaml")?;
        Ok(Self { root })
    }

    pub fn resources(&self) -> Vec<Resource<'_>> {
        let Some(resources) = self.root.get("Resources").and_then(Value::as_mapping) else {
            return Vec::new();
        };
        resources
            .iter()
            .filter_map(|(id, body)| {
                Some(Resource {
                    logical_id: id.as_str()?,
                    kind: body.get("Type")?.as_str()?,
                    properties: body.get("Properties").unwrap_or(&Value::Null),
                    body,
                })
            })
            .collect()
    }

    pub fn resources_of(&self, kind: &str) -> Vec<Resource<'_>> {
        self.resources()
            .into_iter()
            .filter(|r| r.kind == kind)
            .collect()
    }

    pub fn resource(&self, logical_id: &str) -> Option<Resource<'_>> {
        self.resources()
            .into_iter()
            .find(|r| r.logical_id == logical_id)
    }

    /// `Globals.Function.<key>`.
    pub fn function_global(&self, key: &str) -> Option<&Value> {
        self.root.get("Globals")?.get("Function")?.get(key)
    }

    /// `Globals.Function.Environment.Variables`, in template order.
    pub fn global_environment(&self) -> Vec<(String, Value)> {
        self.function_global("Environment")
            .and_then(|e| e.get("Variables"))
            .and_then(Value::as_mapping)
            .map(|vars| {
                vars.iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A property of a function, falling back to `Globals.Function`.
    pub fn function_property<'a>(
        &'a self,
        function: &Resource<'a>,
        key: &str,
    ) -> Option<&'a Value> {
        function
            .properties
            .get(key)
            .or_else(|| self.function_global(key))
    }
}

/// A value's number, whether YAML wrote it as a number or a string.
pub fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The tag name and the tagged value, for `!Ref X` and friends; also the
/// long forms `{Ref: X}`, `{Fn::GetAtt: ...}`, `{Fn::Sub: ...}`.
pub fn intrinsic(value: &Value) -> Option<(String, &Value)> {
    match value {
        Value::Tagged(tagged) => {
            let TaggedValue { tag, value } = tagged.as_ref();
            let name = tag.to_string();
            let name = name.trim_start_matches('!');
            let long = match name {
                "Ref" => "Ref".to_string(),
                other => format!("Fn::{other}"),
            };
            Some((long, value))
        }
        Value::Mapping(map) if map.len() == 1 => {
            let (key, inner) = map.iter().next()?;
            let key = key.as_str()?;
            (key == "Ref" || key.starts_with("Fn::")).then(|| (key.to_string(), inner))
        }
        _ => None,
    }
}

/// What intrinsic functions resolve to in one emulated stack.
#[derive(Debug, Default, Clone)]
pub struct Resolver {
    /// `!Ref X` and `${X}` in `!Sub`: logical ids, parameters and pseudo
    /// parameters (`AWS::Region`, ...).
    pub refs: HashMap<String, String>,
    /// `!GetAtt X.Attr`, keyed `X.Attr`.
    pub attributes: HashMap<String, String>,
}

impl Resolver {
    pub fn resolve(&self, value: &Value) -> Result<String> {
        if let Some((function, inner)) = intrinsic(value) {
            return match function.as_str() {
                "Ref" => {
                    let name = inner.as_str().ok_or_else(|| anyhow!("!Ref needs a name"))?;
                    self.refs
                        .get(name)
                        .cloned()
                        .ok_or_else(|| anyhow!("nothing to resolve !Ref {name} to"))
                }
                "Fn::GetAtt" => {
                    let key = match inner {
                        Value::String(dotted) => dotted.clone(),
                        Value::Sequence(parts) => parts
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join("."),
                        _ => bail!("unexpected !GetAtt form"),
                    };
                    self.attributes
                        .get(&key)
                        .cloned()
                        .ok_or_else(|| anyhow!("nothing to resolve !GetAtt {key} to"))
                }
                "Fn::Sub" => {
                    let text = inner
                        .as_str()
                        .ok_or_else(|| anyhow!("only the one-string form of !Sub is used"))?;
                    self.substitute(text)
                }
                other => bail!("intrinsic {other} is not supported by the test resolver"),
            };
        }
        match value {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => bail!("cannot resolve {value:?} to a string"),
        }
    }

    fn substitute(&self, text: &str) -> Result<String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| anyhow!("unclosed ${{ in !Sub {text}"))?;
            let name = &after[..end];
            let value = match name.split_once('.') {
                Some(_) if !name.starts_with("AWS::") => self.attributes.get(name),
                _ => self.refs.get(name),
            }
            .ok_or_else(|| anyhow!("nothing to substitute for ${{{name}}}"))?;
            out.push_str(value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_forms_resolve() {
        let template = Template::parse(
            "a: !Ref Thing\nb: !GetAtt Queue.Arn\nc: !Sub arn:${AWS::Region}:${Thing}\nd: {Ref: Thing}\n",
        )
        .unwrap();
        let mut resolver = Resolver::default();
        resolver.refs.insert("Thing".into(), "t".into());
        resolver
            .refs
            .insert("AWS::Region".into(), "eu-west-2".into());
        resolver
            .attributes
            .insert("Queue.Arn".into(), "arn:q".into());
        let get = |k: &str| resolver.resolve(template.root.get(k).unwrap()).unwrap();
        assert_eq!(get("a"), "t");
        assert_eq!(get("b"), "arn:q");
        assert_eq!(get("c"), "arn:eu-west-2:t");
        assert_eq!(get("d"), "t");
    }
}
