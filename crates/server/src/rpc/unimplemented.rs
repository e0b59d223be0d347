//! Services registered so clients get etcd's `Unimplemented` until their issue lands; every
//! method falls through to the generated default.

use ballast_api::etcdserverpb::auth_server::Auth;
use ballast_api::{v3electionpb::election_server::Election, v3lockpb::lock_server::Lock};

pub struct NotYet;

#[tonic::async_trait]
impl Auth for NotYet {}
#[tonic::async_trait]
impl Lock for NotYet {}
#[tonic::async_trait]
impl Election for NotYet {}
