"""neutron-server paste filter of the test control plane (replaces fake_project_id).

neutron's stock noauth filter (neutron.auth:NoauthFakeProjectId) makes every request an
admin of project "fake_project_id", whatever the token. This filter uses the control
plane's token convention instead (as lib/cp_noauth.py for nova): X-Auth-Token is
"user:project"; user "admin" gets the roles admin, member, reader, others member,
reader; the project is the token's (a network created with admin:admin belongs to
project "admin", like the servers booted with that token). Without such a token a
request is handled as by the stock filter.

up.sh copies this file to WORK/lib, which is on neutron-server's python path.
"""
import webob.dec
from neutron_lib import context
from oslo_middleware import base


class NoauthUserProject(base.ConfigurableMiddleware):

    @webob.dec.wsgify
    def __call__(self, req):
        user, sep, project = req.headers.get('X-Auth-Token', '').partition(':')
        if sep and user and project:
            roles = ['admin', 'member', 'reader'] if user == 'admin' else ['member', 'reader']
            req.environ['neutron.context'] = context.Context(
                user_id=user, project_id=project, user_name=user, project_name=project,
                roles=roles, auth_token=req.headers['X-Auth-Token'],
                request_id=req.environ.get('openstack.request_id'))
            return self.application
        ctx = context.Context.from_environ(req.environ)
        if not ctx.project_id:
            ctx.project_id = 'fake_project_id'
            ctx = ctx.elevated()
        req.environ['neutron.context'] = ctx
        return self.application
