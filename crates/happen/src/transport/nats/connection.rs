//! The NATS client's options, from Happen's configuration.

use tokio::sync::mpsc;

use crate::error::{HappenError, Result};
use crate::nats::{Auth, NatsConfig};

pub(super) async fn options(
    config: &NatsConfig,
    events: mpsc::UnboundedSender<async_nats::Event>,
) -> Result<async_nats::ConnectOptions> {
    let mut options = match &config.auth {
        Auth::None => async_nats::ConnectOptions::new(),
        Auth::UserPassword { user, password } => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        Auth::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
        Auth::CredentialsFile(path) => {
            async_nats::ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|e| {
                    HappenError::Config(format!(
                        "cannot read credentials file {}: {e}",
                        path.display()
                    ))
                })?
        }
        Auth::NkeySeed(seed) => async_nats::ConnectOptions::with_nkey(seed.clone()),
    };
    if let Some(tls) = &config.tls {
        options = options.require_tls(tls.required);
        for root in &tls.root_certificates {
            options = options.add_root_certificates(root.clone());
        }
        if let Some((cert, key)) = &tls.client_certificate {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    if let Some(name) = &config.name {
        options = options.name(name);
    }
    if config.co_located {
        // This process's nodes get its events directly; the server's copy
        // is for the others.
        options = options.no_echo();
    }
    if config.intermittent {
        // Connect in the background: the runtime starts offline.
        options = options.retry_on_initial_connect();
    }
    let reconnect = config.reconnect;
    Ok(options
        // The documented order: the first reachable server in the list.
        .retain_servers_order()
        .connection_timeout(config.connect_timeout)
        .max_reconnects(reconnect.max_attempts)
        .reconnect_delay_callback(move |attempt| reconnect.delay(attempt))
        .event_callback(move |event| {
            let _ = events.send(event);
            async {}
        }))
}
