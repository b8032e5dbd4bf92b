//! Configuration of the distributed runtime: how [`Happen::connect`](crate::Happen::connect)
//! reaches NATS.
//!
//! The fields mirror the documentation's `nats` section: the servers, whether
//! JetStream is used, reconnection, and the authentication forms the NATS
//! client supports (user and password, token, credentials file, NKey seed,
//! TLS). Every subject Happen uses starts with [`NatsConfig::prefix`], so
//! several independent systems can share one server.
//!
//! ```
//! use std::time::Duration;
//! use happen::nats::{Auth, NatsConfig, Reconnect};
//!
//! let config = NatsConfig::new("nats://127.0.0.1:4222")
//!     .server("nats://127.0.0.1:4223")
//!     .name("order-system")
//!     .prefix("shop")
//!     .auth(Auth::UserPassword { user: "orders".into(), password: "s3cret".into() })
//!     .reconnect(Reconnect { max_attempts: Some(60), base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(2) })
//!     .connect_timeout(Duration::from_secs(3));
//! assert!(config.validate().is_ok());
//! assert!(NatsConfig::new("nats://127.0.0.1:4222").prefix("bad prefix").validate().is_err());
//! ```

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{HappenError, Result};
use crate::name::validate_event_type;

/// The oldest nats-server Happen works with.
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 10);

/// How a client proves who it is to the server.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// A user name and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A token.
    Token(String),
    /// A `.creds` file (JWT and NKey seed), as issued by `nsc`.
    CredentialsFile(PathBuf),
    /// An NKey seed (`SU...`).
    NkeySeed(String),
}

impl std::fmt::Debug for Auth {
    // Secrets stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::UserPassword { user, .. } => {
                write!(f, "UserPassword {{ user: {user:?}, password: <redacted> }}")
            }
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
            Auth::CredentialsFile(p) => write!(f, "CredentialsFile({p:?})"),
            Auth::NkeySeed(_) => f.write_str("NkeySeed(<redacted>)"),
        }
    }
}

/// TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// Refuse to connect without TLS.
    pub required: bool,
    /// PEM files of extra root certificates to trust.
    pub root_certificates: Vec<PathBuf>,
    /// A client certificate and its key (PEM), for mutual TLS.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
}

/// How the client reconnects after losing the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// Give up after this many attempts in a row (`None`: never give up;
    /// `Some(0)` is refused by [`NatsConfig::validate`]). Once it gives up,
    /// the runtime reports the status `closed`, and every send that needs
    /// the server fails (co-located sends to this runtime's nodes go on).
    pub max_attempts: Option<usize>,
    /// The wait before the first retry; it doubles on each failure...
    pub base_delay: Duration,
    /// ...up to this.
    pub max_delay: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            max_attempts: None,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(4),
        }
    }
}

impl Reconnect {
    /// The wait before reconnect attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: usize) -> Duration {
        let doublings = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(16);
        self.base_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }
}

/// How to reach NATS; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:port`, `tls://host:port`); tried in the
    /// order given, on the first connection and on every reconnection.
    pub servers: Vec<String>,
    /// The connection's name, shown by the server's monitoring.
    pub name: Option<String>,
    /// The first token(s) of every subject Happen uses (default `happen`).
    pub prefix: String,
    /// Require JetStream on the server (default `true`).
    pub jetstream: bool,
    /// Credentials.
    pub auth: Auth,
    /// TLS, if any.
    pub tls: Option<Tls>,
    /// Reconnection policy.
    pub reconnect: Reconnect,
    /// How long the first connection may take before it is an error.
    pub connect_timeout: Duration,
    /// How many outgoing events may wait for the server (while it is
    /// unreachable, or slower than the senders) before `send`, `tell` and
    /// `broadcast` fail with [`HappenError::Backpressure`]. Default 65,536.
    pub outgoing_limit: usize,
    /// Whether events between nodes of this runtime stay in the process
    /// (default `true`); see [`NatsConfig::co_located`].
    pub co_located: bool,
    /// How many servers of a JetStream cluster keep a copy of each of
    /// Happen's streams and buckets (default 1); see
    /// [`NatsConfig::replicas`].
    pub replicas: usize,
    /// Whether (and how long) the runtime records its causal web in
    /// JetStream; see [`NatsConfig::record`].
    pub record: Option<crate::trace::TraceRetention>,
    /// Whether the runtime starts without a reachable server (edge
    /// devices); see [`NatsConfig::intermittent`].
    pub intermittent: bool,
}

/// The default [`NatsConfig::outgoing_limit`].
pub const DEFAULT_OUTGOING_LIMIT: usize = 65_536;

impl Default for NatsConfig {
    /// A local server: `nats://127.0.0.1:4222`.
    fn default() -> Self {
        NatsConfig::new("nats://127.0.0.1:4222")
    }
}

impl NatsConfig {
    /// A configuration for one server.
    pub fn new(server: impl Into<String>) -> Self {
        NatsConfig {
            servers: vec![server.into()],
            name: None,
            prefix: "happen".to_owned(),
            jetstream: true,
            auth: Auth::None,
            tls: None,
            reconnect: Reconnect::default(),
            connect_timeout: Duration::from_secs(5),
            outgoing_limit: DEFAULT_OUTGOING_LIMIT,
            co_located: true,
            replicas: 1,
            record: None,
            intermittent: false,
        }
    }

    /// Intermittent connectivity (the documentation's edge setting
    /// `connectivity: { mode: "intermittent", localBuffering: true,
    /// syncOnConnect: true }`): [`Happen::connect`](crate::Happen::connect)
    /// returns at once even when no server is reachable, and the client
    /// keeps trying. Meanwhile the runtime's own nodes talk in the process
    /// (co-located delivery), and events for other processes wait: in the
    /// NATS client's own buffer (2,048 messages), then in the outgoing
    /// queue up to [`NatsConfig::outgoing_limit`]; beyond that, sends fail
    /// with [`HappenError::Backpressure`]. Once connected
    /// they go out in the order sent, and so they do after every later
    /// outage. The buffer is in memory: a process that stops while offline
    /// loses what it held (for events that must survive that, use durable
    /// delivery on a connected runtime).
    ///
    /// JetStream (state, durable delivery) needs the server when the
    /// runtime starts, so an intermittent runtime runs without it:
    /// `jetstream(false)` is required, and `validate` says so otherwise.
    pub fn intermittent(mut self, intermittent: bool) -> Self {
        self.intermittent = intermittent;
        self
    }

    /// Records the runtime's causal web in a JetStream stream shared by
    /// every process with the same prefix, kept as `retention` says (see
    /// [`crate::trace`]): [`Happen::recorder`](crate::Happen::recorder) then
    /// answers for the events of every recording process, and `happen trace
    /// --nats URL <correlation-id>` prints them.
    pub fn record(mut self, retention: crate::trace::TraceRetention) -> Self {
        self.record = Some(retention);
        self
    }

    /// Whether events between nodes of this runtime are delivered in the
    /// process (default `true`), as the embedded runtime delivers them.
    ///
    /// With co-located delivery, a `send` or `tell` to a node id that has a
    /// node in this runtime reaches that node directly, and a `broadcast`
    /// reaches this runtime's matching nodes directly and is published for
    /// the other processes only (the connection asks the server not to echo
    /// its own messages back). The nodes of one process keep talking while
    /// the server is unreachable, and their events cost no trip through it.
    /// A broadcast's copy for the other processes waits in the outgoing
    /// queue like any message: once [`NatsConfig::outgoing_limit`] is
    /// reached, a broadcast is refused ([`HappenError::Backpressure`]) and
    /// delivered to none of this runtime's ordinary nodes (so that sending
    /// it again does not deliver it twice here), while sends and tells to
    /// this runtime's nodes go on. A durable node's copy is stored before
    /// that refusal: a broadcast sent again after one reaches durable nodes
    /// twice.
    ///
    /// A node id with instances in several processes: a sender in a process
    /// that has an instance always reaches its own instance; senders
    /// elsewhere are spread over the instances by the server (a queue
    /// group). Turn co-location off (`false`) to send every event through
    /// the server, so that even this process's senders are spread over all
    /// instances.
    ///
    /// With co-location, `flush()` and `ready()` confirm their round trip
    /// through the server by a message to `<prefix>.ping.<inbox token>`
    /// that the server answers with "no responders": a client subscribed to
    /// that subject (such as a wiretap on `>`) holds them up.
    pub fn co_located(mut self, enabled: bool) -> Self {
        self.co_located = enabled;
        self
    }

    /// Sets how many servers keep a copy of Happen's JetStream streams and
    /// buckets (durable events, dead letters, state, history), from 1 to 5.
    /// In a cluster of three, `replicas(3)` keeps everything through the
    /// loss of one server. Applies when Happen creates them: an existing
    /// stream keeps its replicas.
    ///
    /// ```
    /// use happen::nats::NatsConfig;
    /// let config = NatsConfig::new("nats://127.0.0.1:4222").replicas(3);
    /// assert_eq!(config.replicas, 3);
    /// assert!(NatsConfig::new("nats://127.0.0.1:4222").replicas(6).validate().is_err());
    /// ```
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets how many outgoing events may wait for the server (at least 1).
    pub fn outgoing_limit(mut self, limit: usize) -> Self {
        self.outgoing_limit = limit;
        self
    }

    /// Adds another server to try after the ones already given.
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.servers.push(url.into());
        self
    }

    /// Names the connection.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the subject prefix (dot-separated tokens, no wildcards).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Whether JetStream must be available.
    pub fn jetstream(mut self, enabled: bool) -> Self {
        self.jetstream = enabled;
        self
    }

    /// Sets the credentials.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Sets TLS.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the reconnection policy.
    pub fn reconnect(mut self, reconnect: Reconnect) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Sets the first connection's time limit.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Checks the configuration without connecting.
    pub fn validate(&self) -> Result<()> {
        if self.servers.is_empty() {
            return Err(HappenError::Config(
                "no NATS server given; add one with NatsConfig::new(url)".into(),
            ));
        }
        for url in &self.servers {
            url.parse::<async_nats::ServerAddr>().map_err(|e| {
                HappenError::Config(format!("NATS server address {url:?} is not valid: {e}"))
            })?;
        }
        validate_event_type(&self.prefix).map_err(|e| {
            HappenError::Config(format!(
                "subject prefix {:?} is not valid: {}",
                self.prefix, e.reason
            ))
        })?;
        if !(1..=5).contains(&self.replicas) {
            return Err(HappenError::Config(format!(
                "replicas must be from 1 to 5 (JetStream's limit), not {}",
                self.replicas
            )));
        }
        if self.intermittent && self.jetstream {
            return Err(HappenError::Config(
                "an intermittent runtime starts without a server, and JetStream needs one: set NatsConfig::jetstream(false)".into(),
            ));
        }
        if self.outgoing_limit == 0 {
            return Err(HappenError::Config(
                "outgoing_limit must be at least 1".into(),
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(HappenError::Config(
                "connect_timeout must be above zero".into(),
            ));
        }
        if self.reconnect.max_attempts == Some(0) {
            return Err(HappenError::Config(
                "reconnect.max_attempts must be at least 1 (None never gives up)".into(),
            ));
        }
        if self.reconnect.base_delay.is_zero()
            || self.reconnect.max_delay < self.reconnect.base_delay
        {
            return Err(HappenError::Config(
                "reconnect delays must satisfy 0 < base_delay <= max_delay".into(),
            ));
        }
        Ok(())
    }
}

/// Checks a server's version string against [`MIN_SERVER_VERSION`].
pub(crate) fn check_server_version(version: &str, server: &str) -> Result<()> {
    let mut parts = version.trim_start_matches('v').split(['.', '-']);
    let major = parts.next().and_then(|p| p.parse::<u64>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u64>().ok());
    let (Some(major), Some(minor)) = (major, minor) else {
        return Err(HappenError::Config(format!(
            "cannot read the version {version:?} of the NATS server at {server}"
        )));
    };
    if (major, minor) < MIN_SERVER_VERSION {
        return Err(HappenError::Config(format!(
            "the NATS server at {server} is version {version}; Happen needs {}.{} or newer (JetStream KV and the client protocol it uses); upgrade nats-server, e.g. scripts/ensure-nats-server",
            MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions() {
        assert!(check_server_version("2.15.1", "s").is_ok());
        assert!(check_server_version("2.10.0", "s").is_ok());
        assert!(check_server_version("3.0.0", "s").is_ok());
        let old = check_server_version("2.9.10", "nats://x:4222").unwrap_err();
        assert!(
            old.to_string().contains("2.9.10") && old.to_string().contains("2.10 or newer"),
            "{old}"
        );
        assert!(check_server_version("garbage", "s").is_err());
    }

    #[test]
    fn reconnect_backoff_doubles_up_to_max() {
        let r = Reconnect {
            max_attempts: None,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(r.delay(1), Duration::from_millis(100));
        assert_eq!(r.delay(2), Duration::from_millis(200));
        assert_eq!(r.delay(4), Duration::from_millis(800));
        assert_eq!(r.delay(5), Duration::from_secs(1));
        assert_eq!(r.delay(usize::MAX), Duration::from_secs(1));
    }

    #[test]
    fn invalid_configs_are_clear_errors() {
        let no_servers = NatsConfig {
            servers: vec![],
            ..NatsConfig::default()
        };
        assert!(
            no_servers
                .validate()
                .unwrap_err()
                .to_string()
                .contains("no NATS server")
        );
        assert!(NatsConfig::new("nats://host:notaport").validate().is_err());
        assert!(NatsConfig::default().prefix("a.*").validate().is_err());
        assert!(
            NatsConfig::default()
                .connect_timeout(Duration::ZERO)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let text = format!(
            "{:?}",
            Auth::UserPassword {
                user: "u".into(),
                password: "hunter2".into()
            }
        );
        assert!(!text.contains("hunter2"));
        assert!(!format!("{:?}", Auth::Token("tok-123".into())).contains("tok-123"));
    }
}
