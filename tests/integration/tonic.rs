//! A tonic gRPC server behind `GatedListener::into_incoming`, and a tonic client whose connector
//! runs `linkgate::connect`. The service is written by hand (no protoc): a unary method whose
//! messages are raw bytes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use linkgate::{Admission, Credentials, GatedListener, Key};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::NamedService;

use crate::support::{gate, key};

/// Messages are the bytes themselves.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Self;
    type Decoder = Self;
    fn encoder(&mut self) -> Self {
        Self
    }
    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// `test.Greeter/Hello`: answers with the caller's key id, read from the request extensions.
#[derive(Clone)]
struct Greeter {
    calls: Arc<AtomicUsize>,
}

impl NamedService for Greeter {
    const NAME: &'static str = "test.Greeter";
}

impl tower::Service<http::Request<Body>> for Greeter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let calls = Arc::clone(&self.calls);
        Box::pin(async move {
            let hello = tower::service_fn(move |request: tonic::Request<Bytes>| {
                let calls = Arc::clone(&calls);
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let who = request
                        .extensions()
                        .get::<Admission>()
                        .ok_or_else(|| Status::unauthenticated("no admission"))?;
                    let reply = format!(
                        "hello {} ({}), you said {}",
                        who.key_id(),
                        who.mode(),
                        String::from_utf8_lossy(request.get_ref())
                    );
                    Ok::<_, Status>(tonic::Response::new(Bytes::from(reply)))
                }
            });
            Ok(match request.uri().path() {
                "/test.Greeter/Hello" => {
                    tonic::server::Grpc::new(RawCodec)
                        .unary(hello, request)
                        .await
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

async fn gated_grpc_server(keys: &[&Key]) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = GatedListener::bind("127.0.0.1:0", gate(keys))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let greeter = Greeter {
        calls: Arc::clone(&calls),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(greeter)
            .serve_with_incoming(listener.into_incoming()),
    );
    (addr, calls)
}

/// A tonic channel whose every connection is authenticated with `key` first.
async fn gated_channel(
    addr: SocketAddr,
    key: Key,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let credentials = Arc::new(Credentials::new(key));
    tonic::transport::Endpoint::from_static("http://gated.invalid")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let credentials = Arc::clone(&credentials);
            async move {
                let stream = linkgate::connect(addr, &credentials)
                    .await
                    .map_err(std::io::Error::from)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

#[tokio::test]
async fn an_authenticated_tonic_client_is_answered_and_the_handler_sees_its_key_id() {
    let alice = key("alice");
    let (addr, calls) = gated_grpc_server(&[&alice]).await;
    let channel = gated_channel(addr, alice).await.unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/test.Greeter/Hello");
    let reply: tonic::Response<Bytes> = client
        .unary(
            tonic::Request::new(Bytes::from_static(b"hi")),
            path,
            RawCodec,
        )
        .await
        .unwrap();
    assert_eq!(
        reply.get_ref(),
        &Bytes::from_static(b"hello alice (sealed-fs), you said hi")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_plain_grpc_client_gets_no_response_and_the_handler_never_runs() {
    let (addr, calls) = gated_grpc_server(&[&key("alice")]).await;

    // A tonic client without linkgate: its HTTP/2 preface meets the gate's challenge.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut client = tonic::client::Grpc::new(channel);
        let outcome = async {
            client
                .ready()
                .await
                .map_err(|err| Status::unknown(err.to_string()))?;
            let path = http::uri::PathAndQuery::from_static("/test.Greeter/Hello");
            client
                .unary::<Bytes, Bytes, _>(
                    tonic::Request::new(Bytes::from_static(b"hi")),
                    path,
                    RawCodec,
                )
                .await
        };
        let result = tokio::time::timeout(Duration::from_secs(5), outcome).await;
        assert!(
            !matches!(result, Ok(Ok(_))),
            "a plain gRPC call got an answer"
        );
    }

    // The raw bytes: the challenge and the malformed verdict, no HTTP/2 frame.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut received)).await;
    assert_eq!(received.len(), 41, "{received:?}");
    assert_eq!(&received[..8], b"LGATE/1\n");

    // An impostor client never gets to gRPC either.
    let impostor = gated_channel(addr, key("alice")).await;
    assert!(impostor.is_err(), "the impostor's connector fails");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler never ran");
}
