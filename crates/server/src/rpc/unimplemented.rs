//! Services registered so clients get etcd's `Unimplemented` until their issue lands; every
//! method falls through to the generated default.

use ballast_api::etcdserverpb::auth_server::Auth;

pub struct NotYet;

#[tonic::async_trait]
impl Auth for NotYet {}
