//! Page walking: every item of a paged list as one [`Stream`](futures_core::Stream), requesting
//! the next page with the previous page's `next_page_token` until it is
//! empty. Each page is one call with its own deadline and retries; the
//! stream holds one page in memory at a time and ends after the first error.

use crate::client::Client;
use crate::error::Error;
use crate::result_stream::ResultStream;
use crate::v1::*;

/// Paged is a list request whose answer comes in pages.
trait Paged: Clone + Send + 'static {
    type Item: Send + 'static;
    fn set_page_token(&mut self, token: String);
    /// fetch reads one page: its items and the token of the next ("" at the end).
    fn fetch(
        self,
        client: &Client,
    ) -> impl std::future::Future<Output = Result<(Vec<Self::Item>, String), Error>> + Send;
}

impl Paged for ListSessionsRequest {
    type Item = Session;
    fn set_page_token(&mut self, token: String) {
        self.page_token = token;
    }
    async fn fetch(self, client: &Client) -> Result<(Vec<Session>, String), Error> {
        let page = client.list_sessions(self).await?;
        Ok((page.sessions, page.next_page_token))
    }
}

impl Paged for ListMessagesRequest {
    type Item = Message;
    fn set_page_token(&mut self, token: String) {
        self.page_token = token;
    }
    async fn fetch(self, client: &Client) -> Result<(Vec<Message>, String), Error> {
        let page = client.list_messages(self).await?;
        Ok((page.messages, page.next_page_token))
    }
}

/// Walk is the stream of a page walk. It asks for the next page only once
/// the items of the last one are consumed.
pub type Walk<T> = ResultStream<T>;

fn walk<R: Paged>(client: &Client, mut request: R) -> Walk<R::Item> {
    let client = client.clone();
    ResultStream::new(async_stream::try_stream! {
        loop {
            let (items, next_page_token) = request.clone().fetch(&client).await?;
            for item in items {
                yield item;
            }
            if next_page_token.is_empty() {
                break;
            }
            request.set_page_token(next_page_token);
        }
    })
}

impl Client {
    /// sessions streams every session that `request` selects (its filter and
    /// order), page after page of `request.page_size`, starting at
    /// `request.page_token`. It sets `skip_total_size`: a walker has no use
    /// for the count.
    pub fn sessions(&self, mut request: ListSessionsRequest) -> Walk<Session> {
        request.skip_total_size = true;
        walk(self, request)
    }

    /// messages streams every message that `request` selects (after a seq or
    /// a time, oldest or newest first), page after page. With `last_n` or
    /// `last_turns` the server answers in one page.
    pub fn messages(&self, request: ListMessagesRequest) -> Walk<Message> {
        walk(self, request)
    }
}
