//! [`ResultStream`]: the one stream type the client returns (page walks,
//! watches), boxed and `Unpin` so that `stream.next().await` needs no
//! pinning and the type can be named in a struct field.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use crate::error::Error;

/// ResultStream yields `Ok(item)`s and ends after an `Err`, or at the end.
pub struct ResultStream<T>(Pin<Box<dyn Stream<Item = Result<T, Error>> + Send>>);

impl<T> ResultStream<T> {
    pub(crate) fn new(
        stream: impl Stream<Item = Result<T, Error>> + Send + 'static,
    ) -> ResultStream<T> {
        ResultStream(Box::pin(stream))
    }
}

impl<T> Stream for ResultStream<T> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx)
    }
}

impl<T> std::fmt::Debug for ResultStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResultStream")
    }
}
