"""cinder-api paste filter of the test control plane (replaces cinder's noauth filter).

cinder's own noauth (cinder.api.middleware.auth:NoAuthMiddleware) takes X-Auth-Token as
"user[:project]" but makes every user an admin. This filter does what nova's noauth2
does on the nova side of the control plane: only user "admin" is an admin (roles admin,
member, reader; others: member, reader). oslo.context reads the token itself from the
environment, so it stays in the request context and travels in cinder's RPC messages
(_context_auth_token) as a keystone token would.

Service tokens: with keystone, keystonemiddleware reports the roles of a valid
X-Service-Token in X-Service-Roles; cinder (bug #2004555) lets only such a service
request delete an attachment that nova still uses, and would otherwise ask nova through
the keystone catalog, which does not exist here. A request carrying X-Service-Token
(nova with [service_user] send_service_user_token, or the agent) is given the role
"service".

up.sh copies this file to WORK/lib, which is on cinder-api's python path.
"""
import webob.dec

from cinder.api.middleware import auth
from cinder.api.openstack import wsgi


class NoAuthAdminOnly(auth.NoAuthMiddlewareBase):

    @webob.dec.wsgify(RequestClass=wsgi.Request)
    def __call__(self, req):
        token = req.headers.get('X-Auth-Token')
        if not token:
            # no token: the stock answer (a "user:project" token to use)
            return self.base_call(req)
        user_id, _sep, project_id = token.partition(':')
        project_id = project_id or user_id
        is_admin = user_id == 'admin'
        roles = ['admin', 'member', 'reader'] if is_admin else ['member', 'reader']
        if req.headers.get('X-Service-Token'):
            req.environ.setdefault('HTTP_X_SERVICE_ROLES', 'service')
        auth._set_request_context(req, user_id=user_id, project_id=project_id,
                                  is_admin=is_admin, roles=roles)
        return self.application
