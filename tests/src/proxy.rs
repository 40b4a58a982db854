//! An in-test TCP proxy that can cut every connection and refuse new ones for a while, to
//! simulate a broker or Redis going away (only ever in front of a loopback address).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A running proxy.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

struct State {
    /// Cancelled to drop every open connection.
    generation: CancellationToken,
    /// New connections are refused until then.
    down_until: Option<Instant>,
    cuts: usize,
}

impl Proxy {
    /// Forwards `127.0.0.1:<new port>` to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            generation: CancellationToken::new(),
            down_until: None,
            cuts: 0,
        }));
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, target, Arc::clone(&state), stop.clone()));
        Ok(Self { addr, state, stop })
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Drops every open connection and refuses new ones for `duration`.
    pub fn cut(&self, duration: Duration) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.generation.cancel();
        state.generation = CancellationToken::new();
        state.down_until = Some(Instant::now() + duration);
        state.cuts += 1;
    }

    /// Accepts connections again at once, whatever the last cut's duration.
    pub fn restore(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .down_until = None;
    }

    /// How many cuts were made.
    pub fn cuts(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cuts
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
            .cancel();
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut client, _)) = accepted else {
            continue;
        };
        let generation = {
            let state = state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.down_until.is_some_and(|until| Instant::now() < until) {
                drop(client); // refused: closed at once
                continue;
            }
            state.generation.clone()
        };
        tokio::spawn(async move {
            let Ok(mut upstream) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                () = generation.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            }
        });
    }
}
