//! What the user writes about the web page: `[web]`.

use serde::Deserialize;

use crate::config::Invalid;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Address of the status page and JSON API. Loopback by default: the LAN is an explicit choice.
    #[serde(default = "default_web_listen")]
    pub listen: String,
    /// Set false to run without the web page.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self { listen: default_web_listen(), enabled: true }
    }
}

fn default_true() -> bool {
    true
}

fn default_web_listen() -> String {
    "127.0.0.1:8080".into()
}

impl WebConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Err(e) = self.listen.parse::<std::net::SocketAddr>() {
            return Err(Invalid::new(
                "web.listen",
                format!("is {:?}; expected address:port such as 127.0.0.1:8080 ({e})", self.listen),
            ));
        }
        Ok(())
    }
}
