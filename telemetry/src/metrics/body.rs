//! Recording when a response is really over: response futures and bodies that carry a pending
//! measurement ([`Completion`]) and settle it when the body ends, fails or is dropped.
//!
//! Nothing is buffered: data frames pass through and only their length is added up. The
//! measurement is settled as soon as the inner body reports its end (so a body hyper stops
//! polling after the last frame still counts as complete). Upgraded responses (`101`) hand the
//! measurement to the tunnel ([`TunnelScope`]); it completes when the tunnel closes, with status
//! `200` as upstream's recorders report for hijacked connections.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::{Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use knative_common::body::LocalBody;
use knative_common::proxy::TunnelScope;
use pin_project_lite::pin_project;

/// A measurement started when a request entered a layer, settled when its response is over.
pub trait Completion: Send + 'static {
    /// The response head is ready with `status` (`200` for an upgraded connection).
    fn respond(&mut self, status: StatusCode);
    /// The response was delivered in full with `response_bytes` bytes of body data.
    fn complete(self, response_bytes: u64);
    /// The exchange ended without a complete response: the response future or body was dropped,
    /// the body failed, or the inner stages panicked. `responded` tells whether a response head
    /// had been produced.
    fn abort(self, responded: bool);
    /// The response switches protocols (`status`: its `101`) and its connection becomes a
    /// tunnel: by default recorded as [`Completion::respond`] with `200`, as upstream's
    /// recorders report hijacked connections.
    fn upgraded(&mut self, status: StatusCode) {
        let _ = status;
        self.respond(StatusCode::OK);
    }
    /// The response body has reported its end after `response_bytes` bytes of data (or has
    /// none to send): settled now ([`Completion::complete`]) unless this returns `false`; then
    /// settled when the body returns its end or is dropped, after what the inner stages'
    /// bodies hold has been released (e.g. a server span that must end after the spans of
    /// inner stages, as upstream's deferred calls end them), and a drop then settles it with
    /// [`Completion::abort_body`]. By default settled now.
    fn ended(&mut self, response_bytes: u64) -> bool {
        let _ = response_bytes;
        true
    }
    /// The response body failed (`failed`) or was dropped before its end, after
    /// `response_bytes` bytes of data: by default [`Completion::abort`] with a response head.
    fn abort_body(self, response_bytes: u64, failed: bool)
    where
        Self: Sized,
    {
        let _ = (response_bytes, failed);
        self.abort(true);
    }
}

/// Holds a [`Completion`] until the response head, and aborts it (unresponded) if dropped
/// unsettled.
struct Pending<C: Completion>(Option<C>);

impl<C: Completion> Pending<C> {
    fn take(&mut self) -> Option<C> {
        self.0.take()
    }
}

impl<C: Completion> Drop for Pending<C> {
    fn drop(&mut self) {
        if let Some(completion) = self.0.take() {
            completion.abort(false);
        }
    }
}

/// Holds a [`Completion`] while the response body is sent, with the body bytes so far, and
/// aborts it ([`Completion::abort_body`]) if dropped unsettled.
struct Delivering<C: Completion> {
    completion: Option<C>,
    bytes: u64,
}

impl<C: Completion> Drop for Delivering<C> {
    fn drop(&mut self) {
        if let Some(completion) = self.completion.take() {
            completion.abort_body(self.bytes, false);
        }
    }
}

/// Given to an upgrade tunnel: completes (with no body bytes) when the tunnel closes.
struct TunnelHold<C: Completion>(Option<C>);

impl<C: Completion> Drop for TunnelHold<C> {
    fn drop(&mut self) {
        if let Some(completion) = self.0.take() {
            completion.complete(0);
        }
    }
}

pin_project! {
    /// A response body that counts the data bytes passing through and settles its
    /// [`Completion`] when the body ends (complete), fails (abort) or is dropped early (abort).
    pub struct MeteredBody<B, C: Completion> {
        #[pin]
        body: B,
        delivering: Delivering<C>,
    }
}

impl<B, C: Completion> MeteredBody<B, C> {
    /// Wraps `body` with nothing to record.
    pub fn unmetered(body: B) -> Self {
        MeteredBody::carrying(body, None)
    }

    /// Wraps `body` (a response's, its head made) to settle `completion` (when `Some`).
    #[inline]
    fn carrying(body: B, completion: Option<C>) -> Self {
        MeteredBody {
            body,
            delivering: Delivering {
                completion,
                bytes: 0,
            },
        }
    }
}

impl<B: LocalBody, C: Completion> LocalBody for MeteredBody<B, C> {
    fn full(bytes: Bytes) -> Self {
        MeteredBody::unmetered(B::full(bytes))
    }
    #[inline]
    fn is_fixed(&self) -> bool {
        self.body.is_fixed()
    }
}

impl<B: Body, C: Completion> Body for MeteredBody<B, C> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let polled = ready!(this.body.as_mut().poll_frame(cx));
        let delivering = this.delivering;
        if delivering.completion.is_some() {
            match &polled {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        delivering.bytes += data.remaining() as u64;
                    }
                    if this.body.is_end_stream() {
                        if let Some(completion) = delivering.completion.as_mut() {
                            if completion.ended(delivering.bytes) {
                                if let Some(completion) = delivering.completion.take() {
                                    completion.complete(delivering.bytes);
                                }
                            }
                        }
                    }
                }
                None => {
                    if let Some(completion) = delivering.completion.take() {
                        completion.complete(delivering.bytes);
                    }
                }
                Some(Err(_)) => {
                    if let Some(completion) = delivering.completion.take() {
                        completion.abort_body(delivering.bytes, true);
                    }
                }
            }
        }
        Poll::Ready(polled)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project! {
    /// Response future of the metering layers: attaches the [`Completion`] to the response
    /// (its body, or the upgrade tunnel) once the inner stages answer.
    ///
    /// `M` chooses how the output is made ([`Inline`] or [`OutOfLine`]): a code-generation
    /// choice only, the output is the same.
    pub struct MeteredFuture<F, C: Completion, M = Inline> {
        #[pin]
        future: F,
        pending: Pending<C>,
        head: bool,
        make: PhantomData<M>,
    }
}

impl<F, C: Completion> MeteredFuture<F, C> {
    /// Wraps the inner `future`; `None` records nothing. `head`: the request was a `HEAD`, so
    /// the server will not send (nor poll) any response body.
    pub fn new(future: F, completion: Option<C>, head: bool) -> Self {
        MeteredFuture::wrap(future, completion, head)
    }
}

impl<F, C: Completion> MeteredFuture<F, C, OutOfLine> {
    /// [`MeteredFuture::new`], its output made out of line ([`OutOfLine`]).
    pub fn out_of_line(future: F, completion: Option<C>, head: bool) -> Self {
        MeteredFuture::wrap(future, completion, head)
    }
}

impl<F, C: Completion, M: MakeMetered> MeteredFuture<F, C, M> {
    fn wrap(future: F, completion: Option<C>, head: bool) -> Self {
        MeteredFuture {
            future,
            pending: Pending(completion),
            head,
            make: PhantomData,
        }
    }
}

/// How [`MeteredFuture`] makes its output (the response with its body metered).
pub trait MakeMetered {
    /// Whether out of line.
    const OUT_OF_LINE: bool;
}

/// Made in the future's `poll` (the queue-proxy's layers, whose outputs it writes in place).
#[derive(Debug)]
pub struct Inline;

/// Made out of line, in the caller's output: for a future whose output, made inline, was
/// built aside and copied into the output (the activator's 424 bytes).
#[derive(Debug)]
pub struct OutOfLine;

impl MakeMetered for Inline {
    const OUT_OF_LINE: bool = false;
}

impl MakeMetered for OutOfLine {
    const OUT_OF_LINE: bool = true;
}

/// `response` with its body metered, settling `completion` when `Some`.
#[inline(always)]
fn metered<B, C: Completion>(
    response: Response<B>,
    completion: Option<C>,
) -> Response<MeteredBody<B, C>> {
    response.map(|body| MeteredBody::carrying(body, completion))
}

/// [`metered`] out of line ([`OutOfLine`]).
#[inline(never)]
fn metered_out_of_line<B, C: Completion>(
    response: Response<B>,
    completion: Option<C>,
) -> Response<MeteredBody<B, C>> {
    metered(response, completion)
}

/// Whether the server sends no body at all with this response (and drops it unpolled).
fn bodiless(head: bool, status: StatusCode) -> bool {
    head || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

impl<F, B, E, C, M> Future for MeteredFuture<F, C, M>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
    C: Completion,
    M: MakeMetered,
{
    type Output = Result<Response<MeteredBody<B, C>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.future.poll(cx))?;
        let completion = this
            .pending
            .take()
            .and_then(|completion| respond(completion, &response, *this.head));
        // One place makes the output: with one per outcome, the response was built aside and
        // copied into the output.
        Poll::Ready(Ok(if M::OUT_OF_LINE {
            metered_out_of_line(response, completion)
        } else {
            metered(response, completion)
        }))
    }
}

/// Records that `response`'s head is ready, and gives back `completion` when it is settled by
/// the response's body, `None` when settled now (no body to send) or handed to an upgrade's
/// tunnel.
#[inline]
fn respond<B: Body, C: Completion>(
    mut completion: C,
    response: &Response<B>,
    head: bool,
) -> Option<C> {
    if let Some(scope) = response.extensions().get::<TunnelScope>() {
        // The 101 goes out on the hijacked connection upstream, so recorders saw nothing
        // written: 200 ([`Completion::upgraded`]), no body bytes, complete when the tunnel
        // closes.
        completion.upgraded(response.status());
        scope.hold(Box::new(TunnelHold(Some(completion))));
        return None;
    }
    completion.respond(response.status());
    if (response.body().is_end_stream() || bodiless(head, response.status())) && completion.ended(0)
    {
        completion.complete(0);
        return None;
    }
    Some(completion)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;

    #[derive(Debug, PartialEq)]
    enum Outcome {
        Complete(u16, u64),
        Abort(bool),
    }

    struct Probe {
        status: u16,
        log: Arc<Mutex<Vec<Outcome>>>,
    }

    impl Completion for Probe {
        fn respond(&mut self, status: StatusCode) {
            self.status = status.as_u16();
        }
        fn complete(self, bytes: u64) {
            self.log
                .lock()
                .unwrap()
                .push(Outcome::Complete(self.status, bytes));
        }
        fn abort(self, responded: bool) {
            self.log.lock().unwrap().push(Outcome::Abort(responded));
        }
    }

    fn probe() -> (Probe, Arc<Mutex<Vec<Outcome>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        (
            Probe {
                status: 0,
                log: log.clone(),
            },
            log,
        )
    }

    type Stream = http_body_util::StreamBody<
        futures_util::stream::Iter<
            std::vec::IntoIter<Result<Frame<Bytes>, knative_common::body::BodyError>>,
        >,
    >;

    fn stream(frames: Vec<Result<Frame<Bytes>, knative_common::body::BodyError>>) -> Stream {
        http_body_util::StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn respond<B>(body: B, completion: Probe) -> Response<MeteredBody<B, Probe>>
    where
        B: Body,
    {
        let future = std::future::ready(Ok::<_, ()>(Response::new(body)));
        MeteredFuture::new(future, Some(completion), false)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn counts_bytes_and_completes_at_end() {
        let (p, log) = probe();
        let body = stream(vec![
            Ok(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
        ]);
        let response = respond(body, p).await;
        let collected = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello world");
        assert_eq!(*log.lock().unwrap(), vec![Outcome::Complete(200, 11)]);
    }

    #[tokio::test]
    async fn full_body_completes_without_a_final_poll() {
        let (p, log) = probe();
        let response = respond(knative_common::body::ProxyBody::full("abc".into()), p).await;
        let mut body = response.into_body();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap().len(), 3);
        // Not polled to the end: is_end_stream already says it is over.
        assert_eq!(*log.lock().unwrap(), vec![Outcome::Complete(200, 3)]);
        drop(body);
        assert_eq!(log.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn empty_body_completes_at_once() {
        let (p, log) = probe();
        let _response = respond(http_body_util::Empty::<Bytes>::new(), p).await;
        assert_eq!(*log.lock().unwrap(), vec![Outcome::Complete(200, 0)]);
    }

    #[tokio::test]
    async fn bodiless_responses_complete_at_once() {
        for (head, status) in [(true, StatusCode::OK), (false, StatusCode::NOT_MODIFIED)] {
            let (p, log) = probe();
            let mut response = Response::new(knative_common::body::ProxyBody::full("x".into()));
            *response.status_mut() = status;
            let future = std::future::ready(Ok::<_, ()>(response));
            let response = MeteredFuture::new(future, Some(p), head).await.unwrap();
            // hyper drops such a body without polling it.
            drop(response);
            assert_eq!(
                *log.lock().unwrap(),
                vec![Outcome::Complete(status.as_u16(), 0)]
            );
        }
    }

    /// The output made out of line is the same: settled at once without a body, by the body
    /// otherwise.
    #[tokio::test]
    async fn out_of_line_output_is_the_same() {
        let (p, log) = probe();
        let future = std::future::ready(Ok::<_, ()>(Response::new(
            http_body_util::Empty::<Bytes>::new(),
        )));
        let _response = MeteredFuture::out_of_line(future, Some(p), false)
            .await
            .unwrap();
        assert_eq!(*log.lock().unwrap(), vec![Outcome::Complete(200, 0)]);

        let (p, log) = probe();
        let body = stream(vec![Ok(Frame::data(Bytes::from_static(b"abcd")))]);
        let future = std::future::ready(Ok::<_, ()>(Response::new(body)));
        let response = MeteredFuture::out_of_line(future, Some(p), false)
            .await
            .unwrap();
        assert!(log.lock().unwrap().is_empty());
        response.into_body().collect().await.unwrap();
        assert_eq!(*log.lock().unwrap(), vec![Outcome::Complete(200, 4)]);
    }

    #[tokio::test]
    async fn failing_body_aborts() {
        let (p, log) = probe();
        let body = stream(vec![
            Ok(Frame::data(Bytes::from_static(b"part"))),
            Err("upstream reset".into()),
        ]);
        let response = respond(body, p).await;
        assert!(response.into_body().collect().await.is_err());
        assert_eq!(*log.lock().unwrap(), vec![Outcome::Abort(true)]);
    }

    #[tokio::test]
    async fn dropped_body_aborts() {
        let (p, log) = probe();
        let body = stream(vec![
            Ok(Frame::data(Bytes::from_static(b"part"))),
            Ok(Frame::data(Bytes::from_static(b"more"))),
        ]);
        let mut body = respond(body, p).await.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(*log.lock().unwrap(), vec![Outcome::Abort(true)]);
    }

    /// A completion that tells what the defaults hide: the bytes sent before an abort, whether
    /// the body failed, an upgrade's own status, the body's end (settled later if `.1`).
    struct Detailed(Arc<Mutex<Vec<String>>>, bool);

    impl Completion for Detailed {
        fn respond(&mut self, status: StatusCode) {
            self.0
                .lock()
                .unwrap()
                .push(format!("respond {}", status.as_u16()));
        }
        fn upgraded(&mut self, status: StatusCode) {
            self.0
                .lock()
                .unwrap()
                .push(format!("upgraded {}", status.as_u16()));
        }
        fn complete(self, bytes: u64) {
            self.0.lock().unwrap().push(format!("complete {bytes}"));
        }
        fn abort(self, responded: bool) {
            self.0.lock().unwrap().push(format!("abort {responded}"));
        }
        fn abort_body(self, bytes: u64, failed: bool) {
            self.0
                .lock()
                .unwrap()
                .push(format!("abort_body {bytes} {failed}"));
        }
        fn ended(&mut self, bytes: u64) -> bool {
            self.0.lock().unwrap().push(format!("ended {bytes}"));
            !self.1
        }
    }

    #[tokio::test]
    async fn a_late_completion_is_settled_when_the_body_is_over() {
        // Ended with its only frame; hyper then drops it unpolled.
        let log = Arc::new(Mutex::new(Vec::new()));
        let future = std::future::ready(Ok::<_, ()>(Response::new(
            knative_common::body::ProxyBody::full("abc".into()),
        )));
        let response = MeteredFuture::new(future, Some(Detailed(log.clone(), true)), false)
            .await
            .unwrap();
        let mut body = response.into_body();
        body.frame().await.unwrap().unwrap();
        assert_eq!(*log.lock().unwrap(), ["respond 200", "ended 3"]);
        drop(body);
        assert_eq!(
            *log.lock().unwrap(),
            ["respond 200", "ended 3", "abort_body 3 false"]
        );

        // Ended at the head; settled when the body returns its end.
        let log = Arc::new(Mutex::new(Vec::new()));
        let future = std::future::ready(Ok::<_, ()>(Response::new(
            http_body_util::Empty::<Bytes>::new(),
        )));
        let response = MeteredFuture::new(future, Some(Detailed(log.clone(), true)), false)
            .await
            .unwrap();
        assert_eq!(*log.lock().unwrap(), ["respond 200", "ended 0"]);
        response.into_body().collect().await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            ["respond 200", "ended 0", "complete 0"]
        );
    }

    #[tokio::test]
    async fn body_aborts_tell_bytes_sent_and_failure() {
        for (fail, expected) in [(true, "abort_body 4 true"), (false, "abort_body 4 false")] {
            let log = Arc::new(Mutex::new(Vec::new()));
            let mut frames = vec![Ok(Frame::data(Bytes::from_static(b"part")))];
            frames.push(if fail {
                Err("upstream reset".into())
            } else {
                Ok(Frame::data(Bytes::from_static(b"more")))
            });
            let future = std::future::ready(Ok::<_, ()>(Response::new(stream(frames))));
            let response = MeteredFuture::new(future, Some(Detailed(log.clone(), false)), false)
                .await
                .unwrap();
            let mut body = response.into_body();
            body.frame().await.unwrap().unwrap();
            if fail {
                assert!(body.frame().await.unwrap().is_err());
            }
            drop(body);
            assert_eq!(*log.lock().unwrap(), ["respond 200", expected]);
        }
    }

    #[tokio::test]
    async fn upgrade_is_told_its_status_and_completes_with_the_tunnel() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut down = http::Request::new(());
        let mut up = Response::new(());
        let scope = TunnelScope::start(hyper::upgrade::on(&mut down), hyper::upgrade::on(&mut up));
        let mut response = Response::new(http_body_util::Empty::<Bytes>::new());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response.extensions_mut().insert(scope);
        let future = std::future::ready(Ok::<_, ()>(response));
        let response = MeteredFuture::new(future, Some(Detailed(log.clone(), false)), false)
            .await
            .unwrap();
        assert_eq!(*log.lock().unwrap(), ["upgraded 101"]);
        // No upgrade ever happens here: the tunnel gives up, and closes.
        drop(response);
        drop((down, up));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*log.lock().unwrap(), ["upgraded 101", "complete 0"]);
    }

    #[tokio::test]
    async fn dropped_future_aborts_unresponded() {
        let (p, log) = probe();
        let future = MeteredFuture::new(
            std::future::pending::<Result<Response<http_body_util::Empty<Bytes>>, ()>>(),
            Some(p),
            false,
        );
        drop(future);
        assert_eq!(*log.lock().unwrap(), vec![Outcome::Abort(false)]);
    }
}
