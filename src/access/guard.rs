//! The one place a gRPC call's token is checked: a tower layer in front of every service, so a
//! new RPC cannot forget it. Each method needs one scope; a method this table does not know
//! needs `admin`, so a service added later is closed until it is listed here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;

use super::tokens::{Caller, Denied, Scope, Tokens};

/// What a call must present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Health checks: load balancers probe without credentials.
    Nothing,
    /// Any known token: the API's description (reflection).
    AnyToken,
    Scope(Scope),
}

/// The scope each gRPC method needs, by its path (`/package.Service/Method`).
pub fn required_scope(path: &str) -> Need {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    match (service, method) {
        ("grpc.health.v1.Health", _) => Need::Nothing,
        ("grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection", _) => Need::AnyToken,
        ("retina.v1.Retina", "Subscribe" | "Query" | "GetNodeInfo") => Need::Scope(Scope::Subscribe),
        ("retina.v1.Collector", "Push") => Need::Scope(Scope::Push),
        ("retina.v1.Pixels", _) => Need::Scope(Scope::Pixels),
        _ => Need::Scope(Scope::Admin),
    }
}

/// Puts [`GrpcGuard`] in front of the server's services. Without tokens configured it lets
/// everything through (the node then listens on loopback only, or was told `insecure`).
#[derive(Clone)]
pub struct GrpcGuardLayer {
    tokens: Option<Arc<Tokens>>,
}

impl GrpcGuardLayer {
    pub fn new(tokens: Option<Arc<Tokens>>) -> Self {
        GrpcGuardLayer { tokens }
    }
}

impl<S> tower::Layer<S> for GrpcGuardLayer {
    type Service = GrpcGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcGuard {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcGuard<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcGuard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(tokens) = &self.tokens {
            match admit(tokens, required_scope(request.uri().path()), request.headers()) {
                Ok(Some(caller)) => {
                    request.extensions_mut().insert(caller);
                }
                Ok(None) => {}
                Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
            }
        }
        Box::pin(self.inner.call(request))
    }
}

/// The HTTP routes' check (`/metrics`, the status page): the caller, when the node has tokens
/// and the caller holds one of `scope`; otherwise the status and message refusing the call.
pub fn http_caller(
    tokens: Option<&Tokens>,
    scope: Scope,
    headers: &http::HeaderMap,
) -> Result<Option<Arc<Caller>>, (http::StatusCode, String)> {
    let Some(tokens) = tokens else {
        return Ok(None);
    };
    admit(tokens, Need::Scope(scope), headers).map_err(|status| {
        let code = match status.code() {
            tonic::Code::PermissionDenied => http::StatusCode::FORBIDDEN,
            _ => http::StatusCode::UNAUTHORIZED,
        };
        (code, status.message().to_string())
    })
}

/// [`http_caller`]'s refusal alone, for routes that need not know who called.
pub fn http_refusal(
    tokens: Option<&Tokens>,
    scope: Scope,
    headers: &http::HeaderMap,
) -> Option<(http::StatusCode, String)> {
    http_caller(tokens, scope, headers).err()
}

/// Checks `headers` against what the call needs: the caller, if a token was needed.
pub fn admit(tokens: &Tokens, need: Need, headers: &http::HeaderMap) -> Result<Option<Arc<Caller>>, tonic::Status> {
    let scope = match need {
        Need::Nothing => return Ok(None),
        Need::AnyToken => None,
        Need::Scope(scope) => Some(scope),
    };
    let authorization = headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
    let caller = tokens.authenticate(authorization).map_err(|denied| match denied {
        Denied::NoToken => tonic::Status::unauthenticated("this node needs a token: `authorization: Bearer <token>`"),
        Denied::UnknownToken => tonic::Status::unauthenticated("unknown or revoked token"),
    })?;
    match scope {
        Some(scope) if !caller.may(scope) => Err(tonic::Status::permission_denied(format!(
            "token {:?} lacks the {:?} scope this call needs",
            caller.name,
            scope.as_str()
        ))),
        _ => Ok(Some(caller)),
    }
}
