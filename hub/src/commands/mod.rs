//! The staff commands: `hub campaign ...` and `hub practices ...`. Each one
//! asks the hub, then prints its answer as JSON (`--json`) or as text.

pub mod campaign;
pub mod practices;

use crate::client::{CliError, Client};
use crate::config::{ConfigFile, Connection};
use crate::render::print_json;
use crate::views;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub struct Context {
    pub client: Client,
    pub config: ConfigFile,
    pub json: bool,
}

impl Context {
    pub async fn new(connection: &Connection, json: bool) -> Result<Self, CliError> {
        let config = ConfigFile::load(connection.config.as_ref())?;
        let client = Client::connect(connection.settings(&config)?).await?;
        Ok(Self {
            client,
            config,
            json,
        })
    }

    /// Prints the hub's answer as JSON, or the text `human` renders of it
    /// (of the part under `key`, when given).
    fn reply<T: DeserializeOwned>(
        &self,
        answer: Value,
        key: Option<&str>,
        human: impl FnOnce(T) -> String,
    ) -> Result<(), CliError> {
        if self.json {
            print_json(&answer);
            return Ok(());
        }
        let part = match key {
            Some(key) => answer[key].clone(),
            None => answer,
        };
        print!("{}", human(views::read(part)?));
        Ok(())
    }

    /// Prints the hub's answer as JSON, or the sentence `human` makes of it.
    fn done<T: DeserializeOwned>(
        &self,
        answer: Value,
        human: impl FnOnce(T) -> String,
    ) -> Result<(), CliError> {
        self.reply(answer, None, |view| human(view) + "\n")
    }
}

const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// One path segment, percent-encoded.
fn segment(value: &str) -> String {
    utf8_percent_encode(value.trim(), SEGMENT).to_string()
}
