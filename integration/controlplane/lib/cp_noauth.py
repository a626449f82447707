"""nova-api paste filter of the test control plane (replaces nova's noauth2 filter).

Behaves like nova.api.openstack.auth.NoAuthMiddleware -- X-Auth-Token is
"user[:project]", user "admin" is an admin -- but also keeps the token in the request
context. Stock noauth2 leaves context.auth_token empty; nova then refuses to talk to
glance ("No valid authentication is available") and the RPC context that reaches the
compute carries no token. With the token kept, it travels to glance/neutron and in the
RPC messages (_context_auth_token) as a keystone token would.

up.sh copies this file to WORK/lib and puts that directory on nova-api's PYTHONPATH.
"""
import webob.dec

from nova.api.openstack import auth
from nova.api.openstack import wsgi


class NoAuthKeepToken(auth.NoAuthMiddlewareBase):

    @webob.dec.wsgify(RequestClass=wsgi.Request)
    def __call__(self, req):
        res = self.base_call(req, False, always_admin=False)
        ctx = req.environ.get('nova.context')
        if ctx is not None and not ctx.auth_token:
            ctx.auth_token = req.headers.get('X-Auth-Token')
        return res
