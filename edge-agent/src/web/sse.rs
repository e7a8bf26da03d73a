//! Server-Sent Events: each new event as it is recorded (`event: event`, data = the event JSON),
//! for the events page's live list and for anyone who wants a push feed. A stream ends when the
//! agent shuts down, so graceful shutdown never waits on an open browser tab.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::WebState;

/// A comment this often keeps proxies and phones from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub async fn event_stream(State(state): State<Arc<WebState>>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let receiver = state.board.subscribe_events();
    let shutdown = state.shutdown.clone();
    let stream = futures_util::stream::unfold((receiver, shutdown), |(mut receiver, mut shutdown)| async move {
        let received = tokio::select! {
            _ = shutdown.wait() => return None,
            received = receiver.recv() => received,
        };
        let message = match received {
            Ok(event) => SseEvent::default()
                .event("event")
                .id(event.event_id.to_string())
                .json_data(&event)
                // Not a message (the document lists event and lagged only): a comment a reader skips.
                .unwrap_or_else(|e| SseEvent::default().comment(format!("an event could not be written: {e}"))),
            // A slow reader missed some: say how many, so a page can reload its list.
            Err(RecvError::Lagged(missed)) => SseEvent::default().event("lagged").data(missed.to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(message), (receiver, shutdown)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}
