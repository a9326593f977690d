//! Where the staff commands connect: flags and environment first, then the
//! config file (`--config`, `$HUB_CONFIG`, else `~/.config/hub/config.toml`).

use crate::client::{CliError, Settings};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Global options shared by every staff command.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Connection to the hub")]
pub struct Connection {
    /// Base URL of the staff API (API Gateway stage URL, or
    /// http://127.0.0.1:PORT for `hub local serve`).
    #[arg(long, env = "HUB_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// AWS region the API is in (default: the AWS chain's, else eu-west-2);
    /// for `local serve`, the region requests must be signed for.
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// AWS profile for credentials (default: the AWS chain's).
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// Config file (default: $HUB_CONFIG, else ~/.config/hub/config.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Seconds to wait for the hub before giving up.
    #[arg(long, default_value_t = 30, global = true)]
    pub timeout: u64,
}

impl Connection {
    /// The client's settings: these flags, else the config file's.
    pub fn settings(&self, file: &ConfigFile) -> Result<Settings, CliError> {
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| file.endpoint.clone())
            .ok_or_else(|| {
                CliError::usage(
                    "no hub endpoint: pass --endpoint URL, set HUB_ENDPOINT, \
                     or put endpoint = \"...\" in ~/.config/hub/config.toml",
                )
            })?;
        let endpoint = endpoint.trim().trim_end_matches('/').to_string();
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(CliError::usage(format!(
                "the endpoint must be an http(s) URL, not {endpoint:?}"
            )));
        }
        Ok(Settings {
            endpoint,
            profile: self.profile.clone().or_else(|| file.profile.clone()),
            region: self.region.clone().or_else(|| file.region.clone()),
            timeout: Duration::from_secs(self.timeout.max(1)),
        })
    }
}

/// `~/.config/hub/config.toml`: defaults for the options above.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
    /// Price of one SMS fragment, for cost estimates.
    pub price_per_fragment: Option<f64>,
    /// Currency symbol for cost estimates (default £).
    pub currency: Option<String>,
}

impl ConfigFile {
    pub fn load(explicit: Option<&PathBuf>) -> Result<Self, CliError> {
        let path = match explicit {
            Some(path) => Some(path.clone()),
            None => std::env::var_os("HUB_CONFIG")
                .map(PathBuf::from)
                .or_else(|| {
                    let base = std::env::var_os("XDG_CONFIG_HOME")
                        .map(PathBuf::from)
                        .or_else(|| {
                            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config"))
                        })?;
                    let path = base.join("hub").join("config.toml");
                    path.exists().then_some(path)
                }),
        };
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| CliError::usage(format!("{}: {e}", path.display())))
    }
}
