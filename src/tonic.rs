//! tonic integration (cargo feature `tonic`): serve gRPC only to admitted clients.
//!
//! [`Admitted`] implements [`tonic::transport::server::Connected`] with the [`Admission`] as its
//! connect info, so `Server::serve_with_incoming(listener.into_incoming())` serves only admitted
//! connections, and each handler finds who is calling in the request's extensions:
//!
//! ```ignore
//! let listener = linkgate::GatedListener::bind("127.0.0.1:50051", gate).await?;
//! tonic::transport::Server::builder()
//!     .add_service(GreeterServer::new(MyGreeter))
//!     .serve_with_incoming(listener.into_incoming())
//!     .await?;
//!
//! // in a handler
//! let who = request.extensions().get::<linkgate::Admission>().expect("set for every call");
//! println!("{} calls", who.key_id());
//! ```
//!
//! (`request.remote_addr()` stays `None`: tonic fills it only for its own TCP type; use
//! [`Admission::peer`].) A gRPC client reaches such a server through `linkgate::connect` in a
//! custom connector, see `tests/integration/tonic.rs`.

use crate::admitted::{Admission, Admitted};

impl<IO> tonic::transport::server::Connected for Admitted<IO> {
    type ConnectInfo = Admission;

    fn connect_info(&self) -> Admission {
        self.admission().clone()
    }
}
