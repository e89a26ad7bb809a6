//! What the two example programs share: their command line and their client.
//!
//! Flags are `--name value` pairs and bare `--switch`es; the rest are
//! positional. The server is `--address` (or $SESSIOND_ADDRESS, default
//! 127.0.0.1:50051), the API key $SESSIOND_TOKEN when the server wants one.

use std::collections::HashMap;

use sessiond_client::{Client, DEFAULT_ADDRESS, Error};

/// Args is a parsed command line.
pub struct Args {
    values: HashMap<String, String>,
    switches: Vec<String>,
    /// positional are the arguments that are not flags, in order.
    pub positional: Vec<String>,
}

impl Args {
    /// parse reads the process's arguments; `switches` names the flags that
    /// take no value.
    pub fn parse(switches: &[&str]) -> Args {
        let mut args = Args {
            values: HashMap::new(),
            switches: Vec::new(),
            positional: Vec::new(),
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.strip_prefix("--") {
                Some(name) if switches.contains(&name) => args.switches.push(name.to_string()),
                Some(name) => {
                    let value = it
                        .next()
                        .unwrap_or_else(|| panic!("--{name} needs a value"));
                    args.values.insert(name.to_string(), value);
                }
                None => args.positional.push(arg),
            }
        }
        args
    }

    /// value is `--name`, else the environment variable `env`, else None.
    pub fn value(&self, name: &str, env: &str) -> Option<String> {
        self.values
            .get(name)
            .cloned()
            .or_else(|| std::env::var(env).ok())
            .filter(|v| !v.is_empty())
    }

    /// switch is whether `--name` was given.
    pub fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    /// client is a client of the server the command line names.
    pub fn client(&self) -> Result<Client, Error> {
        let address = self
            .value("address", "SESSIOND_ADDRESS")
            .unwrap_or_else(|| DEFAULT_ADDRESS.into());
        let mut builder = Client::builder(address);
        if let Ok(key) = std::env::var("SESSIOND_TOKEN") {
            builder = builder.api_key(key);
        }
        builder.build()
    }
}

/// short_name is an enum value's name without its prefix, in lower case
/// (`RUNTIME_STATE_RUNNING` → `running`).
pub fn short_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_lowercase()
}
